"""What a run states about itself when it starts: the lr in force and the key that set it, the
image size, patch grid and token count (for the first printed line, the `start` record and the
head of config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from mimreg.config import Config
from mimreg.engine.schedule import learning_rate, lr_key, lr_source
from mimreg.models import is_vit
from mimreg.models.resnet import resolve_stem


@dataclass(frozen=True)
class TokenGrid:
    """What the encoder sees of one image: its side in pixels, cut into grid x grid patches."""

    img_size: int
    patch_size: int
    grid: int
    tokens: int

    def describe(self) -> str:
        return (f"images {self.img_size}x{self.img_size} px, patch {self.patch_size}: "
                f"{self.grid}x{self.grid} = {self.tokens} tokens")


def token_grid(cfg: Config) -> TokenGrid:
    grid = cfg.img_size // cfg.model.patch_size
    return TokenGrid(cfg.img_size, cfg.model.patch_size, grid, grid * grid)


def start_facts(cfg: Config, world: int) -> dict:
    """What a run states at its start (its `start` record): the lr in force and where it comes
    from, the image size, and a ViT's patch grid and token count or a ResNet's stem."""
    facts = {"lr": learning_rate(cfg.optim, world), "lr_key": lr_key(cfg.optim), "lr_source": lr_source(cfg.optim, world),
             "img_size": cfg.img_size}
    if not is_vit(cfg.model.arch):
        return {**facts, "stem": resolve_stem(cfg.model.stem, cfg.img_size)}
    grid = token_grid(cfg)
    return {**facts, "patch_size": grid.patch_size, "patch_grid": [grid.grid, grid.grid], "tokens": grid.tokens}


def start_line(cfg: Config, world: int) -> str:
    """The same as one line, to print first and to head config.yaml with, e.g. `lr: optim.blr=0.001
    x 128 (batch) x 1 (accum) x 1 (world) / 256 = 0.0005; images 32x32 px, patch 4: 8x8 = 64 tokens`
    (a ResNet: `images 32x32 px, resnet18 with the cifar stem`)."""
    if not is_vit(cfg.model.arch):
        seen = (f"images {cfg.img_size}x{cfg.img_size} px, {cfg.model.arch} with the "
                f"{resolve_stem(cfg.model.stem, cfg.img_size)} stem")
    else:
        seen = token_grid(cfg).describe()
    return f"lr: {lr_source(cfg.optim, world)}; {seen}"
