"""What joint-embedding methods share: encode each view unmasked, project, expose features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimreg.errors import ConfigError
from mimreg.methods.base import Method, pooled_block_indices
from mimreg.models import Encoder


def mlp(dims: list[int], batch_norm: bool = True, last_batch_norm: bool = False) -> nn.Sequential:
    """Linear layers through `dims` with BN + ReLU between them (a projector or predictor)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=not (batch_norm and not last)))
        if not last:
            layers += [nn.BatchNorm1d(b)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


BN_VIEWS = ("per_view", "joint")


@dataclass
class ViewsBatchNorm:
    """The option every joint-embedding method shares: whether the BatchNorm layers of the projector
    (and BYOL's predictor) normalise each view over its own batch (`per_view`: each view through the
    head alone, as the official BYOL, VICReg and Barlow Twins codes do) or both views as one batch
    (`joint`: the views concatenated, as SimCLR's official code does)."""

    bn_views: str = "per_view"

    def __post_init__(self):
        if self.bn_views not in BN_VIEWS:
            raise ConfigError(f"method.bn_views: unknown value {self.bn_views!r}; choose one of {list(BN_VIEWS)}")


class JointEmbedding(Method):
    """Base for SimCLR, VICReg, Barlow Twins, BYOL and L_MSE: two (or more) augmented views.

    Features: `cls` and `block.<i>` concatenate the views along the batch (view-major, V*B rows),
    `emb.<v>` is the projector output of view v (B, d): what T-REGS reads.
    """

    num_views = 2
    accepts_resnet = True

    def __init__(self, encoder: Encoder, options, projector: nn.Module):
        super().__init__(encoder, options)
        self.projector = projector

    def feature_names(self) -> set[str]:
        views = {f"emb.{v}" for v in range(self.num_views)}
        return {"cls", *views, *(f"block.{i}" for i in range(self.encoder.depth))}

    def check_views(self, images) -> list[torch.Tensor]:
        if not isinstance(images, (list, tuple)) or len(images) != self.num_views:
            got = len(images) if isinstance(images, (list, tuple)) else 1
            raise ConfigError(f"method {self.name!r} needs {self.num_views} augmented views per image, got {got}; "
                              f"set data.num_views: {self.num_views} and data.augmentation: simclr")
        return list(images)

    def embed(self, images, needs: frozenset[str], projector: nn.Module | None = None,
              encoder: Encoder | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Projector outputs per view, and the features (all views encoded in one batched pass)."""
        views = self.check_views(images)
        encoder = encoder or self.encoder
        projector = projector or self.projector
        out = encoder.forward_masked(torch.cat(views), None, pooled_block_indices(needs))
        embeddings = self.through_views(projector, list(out.cls.chunk(len(views))))
        features = {"cls": out.cls, **{f"block.{i}": x for i, x in out.pooled_blocks.items()},
                    **{f"emb.{v}": z for v, z in enumerate(embeddings)}}
        return list(embeddings), features

    def through_views(self, head: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """`head` (a projector or predictor) on each view's rows, its BatchNorm statistics taken
        per view or over the views together as the `bn_views` option says."""
        if self.options.bn_views == "per_view":
            return [head(v) for v in views]
        return list(head(torch.cat(views)).chunk(len(views)))
