"""Frozen-encoder features: rebuild the encoder from a checkpoint and embed a dataset split."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mimreg.config import Config, config_from_stored
from mimreg.data import (TransformedDataset, collate_skipping_bad, dataset_stats, eval_crop_fraction, eval_transform,
                         load_dataset)
from mimreg.engine.build import build_encoder
from mimreg.engine.checkpoint import config_of, latest_checkpoint, load_checkpoint, load_matching_state, resolve_checkpoint
from mimreg.errors import MimregError
from mimreg.eval.feature_store import FeatureWriter
from mimreg.eval.subsets import select_subset
from mimreg.methods import METHODS
from mimreg.models import Encoder, ResNetEncoder, mask_noise, random_mask

# cls: cls token after the final norm; mean: mean of the patch tokens after the final norm;
# cls_prenorm: the last block's cls token before the final norm (MSN's forward_blocks features).
POOLS = ("cls", "mean", "cls_prenorm")


@dataclass
class Split:
    """features: pool name (see POOLS) -> (N, D) float32; labels: (N,) int64. on_disk: the features
    are memory-mapped from a feature store (read them in chunks, never whole)."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor
    on_disk: bool = False


def load_encoder(checkpoint: str | Path) -> tuple[Encoder, Config, dict]:
    """The trained encoder (eval mode), the run's config, and the checkpoint's metadata."""
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    cfg = config_from_stored(config_of(state, path))
    encoder = build_encoder(cfg)
    prefix = f"method.{METHODS[cfg.method.name].eval_encoder}."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    load_matching_state(encoder, weights, path)
    encoder.eval()
    meta = {"step": state.get("step"), "epoch": state.get("epoch"), "recipe": cfg.recipe,
            "latest": is_latest(checkpoint)}
    return encoder, cfg, meta


def is_latest(checkpoint: str | Path) -> bool:
    """False for a ckpt_*.pt file that a later checkpoint of its folder supersedes."""
    path = Path(checkpoint)
    return path.is_dir() or latest_checkpoint(path.parent) in (None, path)


def pooled_features(encoder: Encoder, images: torch.Tensor, keep_ids: torch.Tensor | None,
                    pools: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The requested POOLS of one encoder pass over `images` (patches `keep_ids` only, when given)."""
    unknown = set(pools) - set(POOLS)
    if unknown:
        raise MimregError(f"unknown feature pool(s) {sorted(unknown)}; choose from {list(POOLS)}")
    if isinstance(encoder, ResNetEncoder):
        return resnet_features(encoder, images, keep_ids, pools)
    captured = {}
    hook = None
    if "cls_prenorm" in pools:  # read on the way, so the forward stays the encoder's own
        hook = encoder.vit.blocks[-1].register_forward_hook(lambda m, i, out: captured.update(cls_prenorm=out[:, 0]))
    try:
        out = encoder.forward_masked(images, keep_ids)
    finally:
        if hook is not None:
            hook.remove()
    pooled = {"cls": out.cls, "mean": out.tokens.mean(dim=1), **captured}
    return {pool: pooled[pool] for pool in pools}


def resnet_features(encoder: ResNetEncoder, images: torch.Tensor, keep_ids: torch.Tensor | None,
                    pools: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A ResNet's one pool: `cls`, its pooled output."""
    check_resnet_pools(encoder, pools, masked=keep_ids is not None)
    return {"cls": encoder.forward_masked(images, None).cls}


def check_resnet_pools(encoder: Encoder, pools: tuple[str, ...], masked: bool) -> None:
    """A ResNet has no tokens (`mean`), no cls token (`cls_prenorm`) and no patches to mask."""
    if not isinstance(encoder, ResNetEncoder):
        return
    vit_only = [p for p in pools if p != "cls"]
    if vit_only:
        raise MimregError(f"feature pool(s) {vit_only} are for ViT encoders; {encoder.arch} has 'cls' (its pooled "
                          "output): evaluate with --pool cls")
    if masked:
        raise MimregError(f"{encoder.arch} cannot encode masked images (it has no patches); the robustness "
                          "protocol needs a ViT encoder")


@torch.no_grad()
def embed_split(encoder: Encoder, name: str, split: str, root: str | None, *, img_size: int,
                pools: tuple[str, ...] = ("cls", "mean"), max_images: int | None = None, seed: int = 0,
                batch_size: int = 256, device: str | torch.device = "cpu", num_workers: int = 0,
                mask_ratio: float = 0.0, skip_bad_images: bool = False, subset: str | None = None,
                store: str | Path | None = None, store_above: int = 0, columns=None) -> Split:
    """Features of eval-transformed images, unmasked or with `mask_ratio` of their patches dropped
    at random (seeded); only the images a `subset` file names (see eval/subsets.py), and of those a
    random subset when max_images is set. Files that do not decode are an error, or left out with a
    warning when skip_bad_images. With `store`, a split of more than `store_above` images is written
    there chunk by chunk (eval/feature_store.py) and comes back memory-mapped. `columns`: an hf
    dataset's data.hf_* settings."""
    check_resnet_pools(encoder, pools, masked=mask_ratio > 0)
    raw = load_dataset(name, split, root, skip_bad_images=skip_bad_images, columns=columns)
    if subset is not None:
        raw = select_subset(raw, subset, root)
    if max_images is not None and max_images < len(raw):
        chosen = np.random.default_rng(seed).choice(len(raw), max_images, replace=False)
        raw = raw.subset(np.sort(chosen).tolist())
    mean, std = dataset_stats(name)
    dataset = TransformedDataset(raw, eval_transform(img_size, mean, std, eval_crop_fraction(name)), seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping_bad)
    encoder = encoder.to(device)
    writer = FeatureWriter(store, split, pools) if store is not None and len(raw) > store_above else None
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in pools}
    labels, bad_files = [], []
    generator = torch.Generator(device=device).manual_seed(seed)
    for batch in loader:
        bad_files += batch.bad_files
        if batch.images is None:
            continue
        keep = None
        if mask_ratio > 0:
            noise = mask_noise(len(batch.labels), encoder.num_patches, device, generator)
            keep = random_mask(noise, mask_ratio).keep_ids
        pooled = pooled_features(encoder, batch.images.to(device), keep, pools)
        if writer is not None:
            writer.append(pooled)
        else:
            for pool, features in pooled.items():
                chunks[pool].append(features.float().cpu())
        labels.append(batch.labels)
    if bad_files:
        print(f"warning: left out {len(bad_files)} {split} image(s) of {name} that do not decode, "
              f"e.g. {bad_files[0]}", file=sys.stderr)
    if not labels:
        raise MimregError(f"no {split} image of {name} decodes; check data.root")
    if writer is not None:
        return Split(writer.close(torch.cat(labels)), torch.cat(labels), on_disk=True)
    return Split({p: torch.cat(c) for p, c in chunks.items()}, torch.cat(labels))
