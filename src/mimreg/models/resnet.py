"""ResNet encoder: timm's ResNet, with the CIFAR stem for small images, for the joint-embedding methods."""

from __future__ import annotations

from typing import Iterable

import timm
import torch
from torch import nn

from mimreg.errors import ConfigError
from mimreg.models.vit import EncoderOutput

# name -> pooled width (timm's num_features)
RESNET_ARCHS: dict[str, int] = {"resnet18": 512, "resnet50": 2048}
STEMS = ("auto", "cifar", "imagenet")
CIFAR_STEM_MAX_SIZE = 64  # auto: the CIFAR stem up to this image side (solo-learn: CIFAR and STL at 32/96 px)


def resolve_stem(stem: str, img_size: int) -> str:
    """`cifar` (3x3 stride-1 first convolution, no max-pool: solo-learn's and T-REGS's CIFAR
    ResNets) or `imagenet` (timm's 7x7 stride-2 convolution and max-pool); auto picks `cifar` for
    images of at most CIFAR_STEM_MAX_SIZE px, whose 32x32 would else shrink to 1x1 by layer4."""
    if stem not in STEMS:
        raise ConfigError(f"model.stem: unknown value {stem!r}; choose one of {list(STEMS)}")
    if stem == "auto":
        return "cifar" if img_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    return stem


def use_cifar_stem(resnet: nn.Module) -> nn.Module:
    """Replace timm's stem of `resnet` in place by the CIFAR one; also how to rebuild an exported encoder."""
    resnet.conv1 = nn.Conv2d(3, resnet.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    resnet.maxpool = nn.Identity()
    return resnet


class ResNetEncoder(nn.Module):
    """Wraps (does not fork) timm's ResNet; `self.resnet` keeps timm's parameter names (no fc).

    Its stages layer1..layer4 are blocks 0..3 (`depth` 4): `pooled_blocks[i]` is stage i's output
    averaged over space, and `cls` the pooled output (the last stage's, = pooled_blocks[3]), of
    width `embed_dim`. It has no patches: the masked-image methods need a ViTEncoder."""

    def __init__(self, arch: str = "resnet18", img_size: int = 32, stem: str = "auto", drop_path: float = 0.0):
        super().__init__()
        if arch not in RESNET_ARCHS:
            raise ConfigError(f"unknown model.arch {arch!r} for a ResNet; choose one of {sorted(RESNET_ARCHS)}")
        self.arch, self.img_size, self.stem = arch, img_size, resolve_stem(stem, img_size)
        self.resnet = timm.create_model(arch, pretrained=False, num_classes=0, drop_path_rate=drop_path)
        if self.stem == "cifar":
            use_cifar_stem(self.resnet)
        self.embed_dim, self.depth = self.resnet.num_features, len(self.stages)

    @property
    def stages(self) -> list[nn.Module]:
        r = self.resnet
        return [r.layer1, r.layer2, r.layer3, r.layer4]

    def block_index(self, index: int) -> int:
        """Absolute stage index from a possibly negative one (-1 = layer4)."""
        absolute = index + self.depth if index < 0 else index
        if not 0 <= absolute < self.depth:
            raise ConfigError(f"block index {index} is out of range for {self.arch} with {self.depth} stages")
        return absolute

    def forward_masked(self, images: torch.Tensor, keep_ids: torch.Tensor | None,
                       pooled_blocks: Iterable[int] = ()) -> EncoderOutput:
        """The joint methods' call: keep_ids must be None (a ResNet sees the whole image).
        `tokens` are the last stage's spatial positions (B, H*W, embed_dim)."""
        if keep_ids is not None:
            raise ConfigError(f"{self.arch} cannot encode a masked image (it has no patches); masked image "
                              "methods (mae, simmim, msn, mi-mae) and masked evaluations need a vit_* model.arch")
        r = self.resnet
        x = r.maxpool(r.act1(r.bn1(r.conv1(images))))
        wanted = set(pooled_blocks)
        pooled: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                pooled[i] = x.mean(dim=(2, 3))
        return EncoderOutput(cls=x.mean(dim=(2, 3)), tokens=x.flatten(2).transpose(1, 2), pooled_blocks=pooled)

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Frozen-encoder features: `cls`, the pooled output (the only pool a ResNet has)."""
        if pool != "cls":
            raise ConfigError(f"feature pool {pool!r} is for ViT encoders; {self.arch} has 'cls' (its pooled output)")
        return self.forward_masked(images, None).cls

    def no_weight_decay(self) -> set[str]:
        """Nothing by name: BatchNorm weights and biases are 1-D, which the optimizer's groups
        already leave undecayed (timm's rule, as for the ViT's norms and biases)."""
        return set()
