"""MSN (Assran et al., ECCV 2022): match prototype assignments of masked anchor views to an EMA target."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimreg.bounds import bounded
from mimreg.distributed import all_reduce_sum, gather_with_grad, world_size
from mimreg.errors import ConfigError
from mimreg.methods.base import Method, MethodOutput, check_visible, pooled_block_indices, register
from mimreg.models import ViTEncoder
from mimreg.numerics import fp32_loss


def projection_head(dim: int, hidden: int, out: int) -> nn.Sequential:
    """MSN's 3-layer head: Linear-BN-GELU, Linear-BN-GELU, Linear (trunc-normal 0.02 init)."""
    head = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, out))
    for layer in head:
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
    return head


@torch.no_grad()
def sinkhorn(probs: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Balance soft assignments (B, K) so prototypes are used equally over the global batch."""
    q = probs.to(torch.promote_types(probs.dtype, torch.float32)).T  # K x B; at least fp32, fp64 stays
    batch = q.shape[1] * world_size()
    q = q / all_reduce_sum(q.sum())
    k = q.shape[0]
    for _ in range(iterations):
        q = q / all_reduce_sum(q.sum(dim=1, keepdim=True)) / k
        q = q / q.sum(dim=0, keepdim=True) / batch
    return (q * batch).T


@fp32_loss
def msn_loss(anchor: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor, *,
             anchor_temperature: float = 0.1, sharpen: float = 0.25, memax_weight: float = 1.0,
             use_sinkhorn: bool = True, gather: bool = True, eps: float = 1e-12) -> dict[str, torch.Tensor]:
    """MSN Eq. 1-2 (code form, spec §3.3): cross-entropy of anchor predictions against sharpened
    target predictions, plus ME-MAX (log K - entropy of the mean anchor prediction).

    anchor: (V*B, d) view-major anchor embeddings; target: (B, d) target embeddings; prototypes
    (K, d). fp32, log_softmax form. The mean prediction is averaged over all processes with gather.
    """
    anchor, target = F.normalize(anchor, dim=1, eps=eps), F.normalize(target, dim=1, eps=eps)
    protos = F.normalize(prototypes, dim=1, eps=eps)
    logits = anchor @ protos.T / anchor_temperature
    with torch.no_grad():
        # sharpening a softmax at temperature tau with T is a softmax at tau * T
        targets = F.softmax(target @ protos.T / (anchor_temperature * sharpen), dim=1)
        if use_sinkhorn:
            targets = sinkhorn(targets)
        targets = targets.repeat(anchor.shape[0] // target.shape[0], 1)
    ce = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    mean_probs = F.softmax(logits, dim=1).mean(dim=0, keepdim=True)
    if gather:
        mean_probs = gather_with_grad(mean_probs)
    mean_probs = mean_probs.mean(dim=0)
    memax = (mean_probs * torch.log(mean_probs + eps)).sum() + math.log(mean_probs.shape[0])
    return {"msn": ce, "memax": memax_weight * memax}


def anchor_keep(length: int, mask_ratio: float) -> int:
    """Patches the anchor view keeps of its `length` after dropping `mask_ratio` of them."""
    return int(length * (1 - mask_ratio))


@dataclass
class MSNOptions:
    mask_ratio: float = bounded(0.15, ge=0, lt=1)  # token drop on the anchor view (0.15 ViT-S/16 ... 0.7 ViT-B/4)
    per_sample_masks: bool = False  # official: one permutation for the whole batch
    num_prototypes: int = bounded(1024, ge=1)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_output_dim: int = bounded(256, ge=1)
    anchor_temperature: float = bounded(0.1, gt=0)
    target_sharpen: float = bounded(0.25, gt=0)
    memax_weight: float = bounded(1.0, ge=0)  # 5 with use_sinkhorn: false (the better ablation, App. E)
    use_sinkhorn: bool = True
    momentum: float = bounded(0.996, ge=0, le=1)  # EMA from this to 1, linearly over training (x momentum_stretch)
    momentum_stretch: float = bounded(1.0, ge=1)  # official code: 1.25 (its schedules end at 80%)
    gather: bool = True


@register
class MSN(Method):
    name = "msn"
    paper = "MSN (Assran et al., ECCV 2022), Eq. 1-2"
    summary = "masked anchor views match prototype assignments of an EMA target view, with ME-MAX"
    Options = MSNOptions
    eval_encoder = "target_encoder"  # MSN evaluates its EMA target encoder (spec §3.6)

    def __init__(self, encoder: ViTEncoder, options: MSNOptions):
        super().__init__(encoder, options)
        o = options
        self.head = projection_head(encoder.embed_dim, o.proj_hidden_dim, o.proj_output_dim)
        bound = 1 / math.sqrt(o.proj_output_dim)
        self.prototypes = nn.Parameter(torch.empty(o.num_prototypes, o.proj_output_dim).uniform_(-bound, bound))
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("tau", torch.tensor(o.momentum, dtype=torch.float64))

    def no_weight_decay(self) -> set[str]:
        return {"prototypes"}  # as the official code: no decay on the prototypes

    @classmethod
    def check_options(cls, options: MSNOptions, img_size: int, patch_size: int) -> None:
        cells = (img_size // patch_size) ** 2  # of the anchor view, at the image size
        check_visible(options.mask_ratio, anchor_keep(cells, options.mask_ratio), cells, "patches", img_size, patch_size)

    def feature_names(self) -> set[str]:
        return {"cls", "mean", *(f"block.{i}" for i in range(self.encoder.depth))}

    def anchor_keep_ids(self, batch: int, device, generator) -> torch.Tensor:
        length = self.encoder.num_patches
        keep = anchor_keep(length, self.options.mask_ratio)
        if self.options.per_sample_masks:
            return torch.rand(batch, length, device=device, generator=generator).argsort(dim=1)[:, :keep]
        return torch.randperm(length, device=device, generator=generator)[:keep].expand(batch, -1)

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        if not isinstance(images, (list, tuple)) or len(images) < 2:
            raise ConfigError("method 'msn' needs a target view, an anchor view and focal views; "
                              "set data.augmentation: msn")
        target_view, anchor_view, *focal = images
        with torch.no_grad():
            target = self.target_head(self.target_encoder.forward_masked(target_view, None).cls)
        keep = self.anchor_keep_ids(anchor_view.shape[0], anchor_view.device, generator)
        out = self.encoder.forward_masked(anchor_view, keep, pooled_block_indices(needs))
        anchors = [out.cls]
        if focal:  # not masked; all focal views in one batched pass
            anchors.append(self.encoder.forward_masked(torch.cat(focal), None).cls)
        anchor = self.head(torch.cat(anchors))
        o = self.options
        losses = msn_loss(anchor, target, self.prototypes, anchor_temperature=o.anchor_temperature,
                          sharpen=o.target_sharpen, memax_weight=o.memax_weight, use_sinkhorn=o.use_sinkhorn,
                          gather=o.gather)
        features = {"cls": out.cls, "mean": out.tokens.mean(dim=1),
                    **{f"block.{i}": x for i, x in out.pooled_blocks.items()}}
        return MethodOutput(losses, features)

    def clipped_parameters(self):
        """The encoder and its head, as the official `clip_grad_norm_(encoder.parameters(), 3)`: not the
        prototypes, nor the EMA target (it has no gradient)."""
        return [p for name, p in self.named_parameters() if name != "prototypes" and p.requires_grad]

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        tau = float(self.tau)
        for online, target in ((self.encoder, self.target_encoder), (self.head, self.target_head)):
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.lerp_(p_o, 1 - tau)
        ramp = min(1.0, progress / self.options.momentum_stretch)
        self.tau.fill_(self.options.momentum + (1 - self.options.momentum) * ramp)
