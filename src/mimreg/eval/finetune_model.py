"""The fine-tuning classifier: timm's VisionTransformer holding the pretrained encoder's weights, a
new head, and timm's layer-wise lr-decay parameter groups."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import nn

from mimreg.errors import MimregError
from mimreg.eval.finetune_config import check_finetunable
from mimreg.models import ViTEncoder

MAE_HEAD_INIT_STD = 2e-5  # MAE main_finetune.py: trunc_normal_(head.weight, std=2e-5)


class FinetuneViT(VisionTransformer):
    """timm's VisionTransformer, with MAE's layer grouping for layer-wise lr decay: the final norm
    goes with the head (scale 1), where timm's group_matcher puts it in the last block's layer
    (scale layer_decay); with the cls head that is the only difference."""

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|reg_token|pos_embed|patch_embed|norm_pre",
                    blocks=[(r"^blocks\.(\d+)", None)])  # unmatched (norms, head) form the top layer


def build_classifier(encoder: ViTEncoder, num_classes: int, head: str, drop_path: float) -> FinetuneViT:
    """A timm ViT with the encoder's architecture and weights and a new linear head.

    head="gap": mean of the patch tokens, then a new LayerNorm (fc_norm) and the head; the
    pretrained final norm is dropped, as MAE fine-tunes with global pooling. head="cls": the cls
    token after the pretrained final norm. The fixed sin-cos positions are loaded and trained
    further, as MAE does.
    """
    check_finetunable(encoder.arch)
    model = FinetuneViT(img_size=encoder.img_size, patch_size=encoder.patch_size, embed_dim=encoder.embed_dim,
                              depth=encoder.depth, num_heads=encoder.num_heads, mlp_ratio=4.0, qkv_bias=True,
                              num_classes=num_classes, global_pool="avg" if head == "gap" else "token",
                              drop_path_rate=drop_path)
    missing, unexpected = model.load_state_dict(encoder.vit.state_dict(), strict=False)
    new = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if head == "gap" else set())
    dropped = {"norm.weight", "norm.bias"} if head == "gap" else set()
    if set(missing) != new or set(unexpected) != dropped:
        raise MimregError(f"the encoder's weights do not fit timm's VisionTransformer: missing {sorted(missing)}, "
                          f"unexpected {sorted(unexpected)}")
    nn.init.trunc_normal_(model.head.weight, std=MAE_HEAD_INIT_STD)
    nn.init.zeros_(model.head.bias)
    model.pos_embed.requires_grad_(True)
    return model


def freeze_all_but_last(model: VisionTransformer, blocks: int | None) -> None:
    """Partial fine-tuning (MAE Fig. 9): train the last `blocks` blocks, the final norm and the head
    (with fc_norm); `blocks=0` trains the head alone (a linear probe); None trains everything."""
    if blocks is None:
        return
    depth = len(model.blocks)
    trained = [f"blocks.{i}." for i in range(depth - blocks, depth)] + ["head.", "fc_norm."]
    if blocks > 0:
        trained.append("norm.")
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for prefix in trained))


def layer_decay_groups(model: VisionTransformer, weight_decay: float, layer_decay: float) -> list[dict]:
    """timm's param_groups_layer_decay: block i gets lr x layer_decay^(depth - i), the patch embedding,
    cls token and positions layer_decay^(depth + 1), the head and norms 1; no weight decay on 1-D
    parameters, positions and the cls token. Frozen parameters are left out."""
    return param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                    no_weight_decay_list=model.no_weight_decay())

