"""model.init: an encoder started from a timm ViT's weights saved in the test (no network)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from mimreg.engine.build import build_encoder
from mimreg.engine.checkpoint import latest_checkpoint, load_checkpoint
from mimreg.engine.init_weights import apply_init
from mimreg.errors import ConfigError
from mimreg.models import VIT_ARCHS, ViTEncoder

pytestmark = pytest.mark.usefixtures("single_thread")


def timm_vit(arch: str = "vit_micro", img_size: int = 32, patch_size: int = 4, depth: int | None = None,
             num_classes: int = 10) -> VisionTransformer:
    """A timm ViT of mimreg's `arch`, learned pos_embed and a classification head, as timm's hub models."""
    torch.manual_seed(0)
    dim, arch_depth, heads = VIT_ARCHS[arch]
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth or arch_depth,
                              num_heads=heads, mlp_ratio=4.0, qkv_bias=True, num_classes=num_classes)
    with torch.no_grad():  # timm inits pos_embed and cls_token small; larger makes the copy check sharper
        model.pos_embed.normal_(std=0.5)
        model.cls_token.normal_(std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def timm_model() -> VisionTransformer:
    return timm_vit()


@pytest.fixture(scope="module")
def saved(timm_model, tmp_path_factory):
    """The timm model's weights as a torch .pth and as a .safetensors file."""
    folder = tmp_path_factory.mktemp("weights")
    state = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    torch.save(state, folder / "vit.pth")
    save_file(state, str(folder / "vit.safetensors"))
    return folder


def assert_same_features(encoder: ViTEncoder, timm_model: VisionTransformer) -> None:
    """The encoder's cls and patch tokens equal timm's forward_features, in float64."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = encoder.double().eval().forward_masked(images, None)
    with torch.no_grad():
        theirs = timm_vit().double().forward_features(images)
    torch.testing.assert_close(ours.cls, theirs[:, 0], rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.tokens, theirs[:, 1:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["vit.pth", "vit.safetensors"])
def test_timm_weights_give_timms_features(saved, timm_model, tiny_config, capsys, name):
    cfg = tiny_config("mae", model__init=str(saved / name))
    encoder = build_encoder(cfg, load_init=True)
    assert_same_features(encoder, timm_model)
    assert not encoder.vit.pos_embed.requires_grad  # loaded, and kept fixed as MAE keeps its positions
    line = capsys.readouterr().out
    assert f"model.init: loaded {len(encoder.vit.state_dict())} encoder tensors from {saved / name}" in line
    assert "head.* (2)" in line  # timm's classification head is left out
    assert not torch.equal(build_encoder(cfg).vit.pos_embed, encoder.vit.pos_embed)  # only with load_init


def test_mae_official_layout_maps_the_encoder_and_leaves_the_decoder(timm_model, tmp_path, capsys):
    encoder_keys = {k: v for k, v in timm_model.state_dict().items() if not k.startswith("head.")}
    decoder = {"mask_token": torch.randn(1, 1, 64), "decoder_embed.weight": torch.randn(64, 128),
               "decoder_pos_embed": torch.randn(1, 65, 64), "decoder_blocks.0.norm1.weight": torch.ones(64),
               "decoder_pred.weight": torch.randn(48, 64)}
    torch.save({"model": {**encoder_keys, **decoder}, "epoch": 799, "args": {}}, tmp_path / "mae_pretrain.pth")
    encoder = ViTEncoder("vit_micro", 32, 4)
    report = apply_init(encoder, str(tmp_path / "mae_pretrain.pth"))
    assert report["ignored"] == sorted(decoder)
    assert_same_features(encoder, timm_model)
    assert "ignored from the file: decoder_* (4), mask_token* (1)" in capsys.readouterr().out


def test_other_image_size_resamples_the_positions(timm_model, saved):
    encoder = ViTEncoder("vit_micro", img_size=48, patch_size=4)  # a 12x12 grid from timm's 8x8
    report = apply_init(encoder, str(saved / "vit.pth"))
    assert report["resampled"] == ["pos_embed resampled from a 8x8 to a 12x12 grid"]
    source = timm_model.pos_embed.detach()
    grid = source[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False,
                                               antialias=True)  # timm resample_abs_pos_embed's default
    got = encoder.vit.pos_embed.detach()
    torch.testing.assert_close(got[:, 1:], expected.flatten(2).transpose(1, 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(got[:, :1], source[:, :1], rtol=0, atol=0)  # the cls slot is copied
    torch.testing.assert_close(encoder.vit.blocks[0].attn.qkv.weight, timm_model.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("arch,depth,first", [("vit_tiny", None, "cls_token (1, 1, 192) vs (1, 1, 128)"),
                                              ("vit_micro", 4, "missing ['blocks.4.norm1.weight'")])
def test_another_architecture_is_a_one_line_error(tmp_path, arch, depth, first):
    torch.save(timm_vit(arch, depth=depth).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError) as err:
        apply_init(ViTEncoder("vit_micro", 32, 4), str(tmp_path / "other.pth"))
    message = str(err.value)
    assert "\n" not in message and first in message and "set model.arch" in message


def test_timm_name_is_read_from_the_local_cache_only(timm_model, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    name = "vit_base_patch16_224.mae"
    with pytest.raises(ConfigError, match=r"not in the local Hugging Face cache .* model.init_download: true or "
                                          r"run `huggingface-cli download timm/vit_base_patch16_224.mae`"):
        apply_init(ViTEncoder("vit_micro", 32, 4), name)
    repo = tmp_path / "models--timm--vit_base_patch16_224.mae"  # the hub cache's layout
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()},
              str(repo / "snapshots" / "abc123" / "model.safetensors"))
    encoder = ViTEncoder("vit_micro", 32, 4)
    assert apply_init(encoder, name)["source"].startswith(f"{name} (")
    assert_same_features(encoder, timm_model)


def test_unknown_source_is_a_one_line_error():
    with pytest.raises(ConfigError, match="neither a file, a folder nor a timm model name"):
        apply_init(ViTEncoder("vit_micro", 32, 4), "no/such/weights.pth")


def test_resume_restores_the_checkpoint_not_the_init(saved, timm_model, tiny_config, tmp_path):
    from mimreg.engine.loop import pretrain

    init = tmp_path / "init.pth"
    init.write_bytes((saved / "vit.pth").read_bytes())
    sets = dict(data__subset=64, optim__batch_size=16, train__knn_every=0, monitor=[])  # 4 steps, no monitors
    cfg = tiny_config("mae", model__init=str(init), train__halt_after_steps=1, **sets)
    pretrain(cfg, tmp_path / "run")
    first = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert first["config"]["model"]["init"] == str(init)  # recorded in the run's config
    pos = first["model"]["method.encoder.vit.pos_embed"]
    torch.testing.assert_close(pos, timm_model.pos_embed.detach(), rtol=0, atol=0)  # loaded, kept fixed
    init.unlink()  # a resume that read model.init again would fail here
    pretrain(tiny_config("mae", model__init=str(init), **sets), tmp_path / "run", resume=True)
    last = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert last["step"] == 4
    torch.testing.assert_close(last["model"]["method.encoder.vit.pos_embed"], pos, rtol=0, atol=0)


def test_export_folder_checkpoint_and_run_folder_are_sources(tiny_config, tmp_path):
    from mimreg.commands import export_timm
    from mimreg.engine.loop import pretrain

    pretrain(tiny_config("mae", data__subset=64, train__halt_after_steps=1), tmp_path / "run")
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    trained = {k.removeprefix("method.encoder.vit."): v for k, v in load_checkpoint(checkpoint)["model"].items()
               if k.startswith("method.encoder.vit.")}
    export_timm(tmp_path / "run", tmp_path / "export" / "encoder.pth")  # encoder.pth + encoder.json
    for source in (tmp_path / "export", tmp_path / "export" / "encoder.pth", checkpoint, tmp_path / "run"):
        encoder = ViTEncoder("vit_micro", 32, 4)
        apply_init(encoder, str(source))
        for name, value in encoder.vit.state_dict().items():
            assert torch.equal(value, trained[name]), (source, name)


def test_finetune_from_init_starts_from_those_weights(saved, timm_model, tmp_path):
    import json

    from mimreg.cli import main

    out = tmp_path / "ft"
    code = main(["eval", "finetune", "--init", str(saved / "vit.safetensors"), "--data", "synthetic", "--out",
                 str(out), "--device", "cpu", "--epochs", "1", "--batch-size", "16", "--fraction", "0.125",
                 "--test-images", "16", "--blocks", "1"])
    assert code == 0
    tuned = load_checkpoint(latest_checkpoint(out / "checkpoints"))["model"]
    for name, value in timm_model.state_dict().items():  # only the last block (and the new head) trained
        if name.startswith(("blocks.0.", "blocks.4.", "patch_embed.")):
            assert torch.equal(tuned[f"classifier.{name}"], value), name
    [result] = list((out / "evals").glob("finetune_*.json"))
    record = json.loads(result.read_text())
    assert record["recipe"] == f"init {saved / 'vit.safetensors'}" and 0 <= record["result"]["top1"] <= 100


def test_a_timm_resnet_loads_into_the_resnet_encoder(tmp_path):
    import timm

    from mimreg.models import ResNetEncoder

    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    encoder = ResNetEncoder("resnet18", img_size=128, stem="imagenet")
    assert apply_init(encoder, str(tmp_path / "r18.pth"))["ignored"] == ["fc.bias", "fc.weight"]
    for name, value in encoder.resnet.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name
    with pytest.raises(ConfigError, match=r"other shapes \['conv1.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)'\]"):
        apply_init(ResNetEncoder("resnet18", img_size=32, stem="cifar"), str(tmp_path / "r18.pth"))
