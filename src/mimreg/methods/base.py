"""The method interface: a batch of images in, named loss terms and named features out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from mimreg.errors import ConfigError, MimregError
from mimreg.models import EncoderOutput, ViTEncoder

METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    METHODS[cls.name] = cls
    return cls


@dataclass
class MethodOutput:
    """losses: name -> scalar term, summed with weight 1 into the objective.
    features: name -> tensor that regularizers and the online probe may read: (B, D) `cls`, `mean`,
    `block.<i>` (mean-pooled output of block i before the final norm); (B, N, D) `tokens` (encoder
    output at the visible patches) and `patch_embed` (the encoder's input at the same patches)."""

    losses: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Prediction:
    """One forward pass of a pixel-reconstructing method, before its loss.

    pred, target: (B', L, p*p*3) the prediction of every patch and the patchified input images
    (B' = K*B for K masked views, view-major); removed: (B', L), 1 where masked; norm_pix: pred
    estimates each target patch standardised by its own mean and std (MAE's norm_pix_loss);
    encoded: the encoder pass the prediction came from.
    """

    pred: torch.Tensor
    target: torch.Tensor
    removed: torch.Tensor
    norm_pix: bool
    encoded: EncoderOutput


class Method(nn.Module):
    """Subclasses set `name`, `paper`, `summary`, `Options` and implement `forward`."""

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type]
    eval_encoder: ClassVar[str] = "encoder"  # the attribute holding the encoder to evaluate and export
    accepts_resnet: ClassVar[bool] = False  # True: reads only whole-image features (no patches, no masks)

    def __init__(self, encoder: ViTEncoder, options):
        super().__init__()
        self.encoder = encoder
        self.options = options

    @classmethod
    def check_options(cls, options, img_size: int, patch_size: int) -> None:
        """Refuse at load, with a ConfigError naming the key (`method.mask_ratio`), options that
        cannot run on images of `img_size` px cut into patches of `patch_size` px (the range of
        each option alone is declared on `Options`). Nothing to refuse by default."""

    def feature_names(self) -> set[str]:
        """Every feature name this method can return."""
        return {"cls", "mean", "tokens", "patch_embed", *(f"block.{i}" for i in range(self.encoder.depth))}

    def forward(self, images: torch.Tensor | list[torch.Tensor], *, needs: frozenset[str] = frozenset(),
                generator: torch.Generator | None = None) -> MethodOutput:
        """images: (B, 3, H, W), or a list of views of the same B images for multi-view methods."""
        raise NotImplementedError

    def clipped_parameters(self):
        """The parameters `optim.clip_grad` clips (the online probe and the regularizers' own
        estimators are not clipped)."""
        return self.parameters()

    def predict(self, images: torch.Tensor, *, needs: frozenset[str] = frozenset(),
                generator: torch.Generator | None = None) -> Prediction:
        """The pixel prediction behind the loss (masked image modeling methods only)."""
        raise MimregError(f"method {self.name!r} does not reconstruct pixels; reconstructions need mae or simmim")

    def on_step_end(self, progress: float) -> None:
        """Called after every optimizer step with the fraction of training done (EMA updates)."""


def check_visible(ratio: float, visible: int, cells: int, what: str, img_size: int, patch_size: int,
                  disjoint_masks: int = 1) -> None:
    """A mask must leave each view `visible` >= 1 of the `cells` (patches or blocks, `what`), and
    `disjoint_masks` masks with disjoint visible sets need that many times `visible` cells."""
    if visible < 1:
        raise ConfigError(f"method.mask_ratio={ratio:g} leaves no visible patch of the {cells} {what} of a "
                          f"{img_size}px image at model.patch_size={patch_size}; lower method.mask_ratio")
    k = disjoint_masks
    if k > 1 and k * visible > cells:
        raise ConfigError(f"method.num_masks={k} disjoint masks of {visible} visible {what} need {k * visible}, "
                          f"the image has {cells}; lower method.num_masks or raise method.mask_ratio")


def pooled_block_indices(needs: frozenset[str]) -> list[int]:
    return sorted(int(name.split(".", 1)[1]) for name in needs if name.startswith("block."))
