"""Frozen-encoder features: rebuild the encoder from a checkpoint and embed a dataset split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mimreg.config import Config, config_from_stored
from mimreg.data import TransformedDataset, collate_skipping_bad, dataset_stats, eval_transform, load_dataset
from mimreg.engine.build import build_encoder
from mimreg.engine.checkpoint import config_of, load_checkpoint, load_matching_state, resolve_checkpoint
from mimreg.methods import METHODS
from mimreg.models import ViTEncoder, mask_noise, random_mask

@dataclass
class Split:
    """features: pool name ('cls', 'mean') -> (N, D) float32; labels: (N,) int64."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor


def load_encoder(checkpoint: str | Path) -> tuple[ViTEncoder, Config, dict]:
    """The trained encoder (eval mode), the run's config, and the checkpoint's metadata."""
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    cfg = config_from_stored(config_of(state, path))
    encoder = build_encoder(cfg)
    prefix = f"method.{METHODS[cfg.method.name].eval_encoder}."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    load_matching_state(encoder, weights, path)
    encoder.eval()
    meta = {"step": state.get("step"), "epoch": state.get("epoch"), "recipe": cfg.recipe}
    return encoder, cfg, meta


@torch.no_grad()
def embed_split(encoder: ViTEncoder, name: str, split: str, root: str | None, *, img_size: int,
                pools: tuple[str, ...] = ("cls", "mean"), max_images: int | None = None, seed: int = 0,
                batch_size: int = 256, device: str | torch.device = "cpu", num_workers: int = 0,
                mask_ratio: float = 0.0) -> Split:
    """Features of eval-transformed images, unmasked or with `mask_ratio` of their patches dropped
    at random (seeded); a random subset when max_images is set."""
    raw = load_dataset(name, split, root)
    if max_images is not None and max_images < len(raw):
        chosen = np.random.default_rng(seed).choice(len(raw), max_images, replace=False)
        raw = raw.subset(np.sort(chosen).tolist())
    mean, std = dataset_stats(name)
    dataset = TransformedDataset(raw, eval_transform(img_size, mean, std), seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping_bad)
    encoder = encoder.to(device)
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in pools}
    labels = []
    generator = torch.Generator(device=device).manual_seed(seed)
    for batch in loader:
        if batch.images is None:
            continue
        keep = None
        if mask_ratio > 0:
            noise = mask_noise(len(batch.labels), encoder.num_patches, device, generator)
            keep = random_mask(noise, mask_ratio).keep_ids
        out = encoder.forward_masked(batch.images.to(device), keep)
        pooled = {"cls": out.cls, "mean": out.tokens.mean(dim=1)}
        for pool in pools:
            chunks[pool].append(pooled[pool].float().cpu())
        labels.append(batch.labels)
    return Split({p: torch.cat(c) for p, c in chunks.items()}, torch.cat(labels))
