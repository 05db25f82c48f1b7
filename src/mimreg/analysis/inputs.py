"""What the pictures look at: a trained method rebuilt from its checkpoint, and test images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mimreg.config import Config, config_from_dict
from mimreg.data import BadSample, dataset_stats, eval_crop_fraction, eval_transform, load_dataset
from mimreg.engine.build import build_method
from mimreg.engine.checkpoint import config_of, load_checkpoint, resolve_checkpoint
from mimreg.errors import DataError
from mimreg.methods import Method
from mimreg.models import Encoder, ResNetEncoder


@dataclass
class TrainedModel:
    """method: the whole trained method (decoder included), eval mode; encoder: the one its
    evaluation reads (MSN: the target encoder); meta: step, epoch, recipe of the checkpoint."""

    method: Method
    encoder: Encoder
    cfg: Config
    meta: dict


def load_trained(checkpoint: str | Path) -> TrainedModel:
    """The method of a checkpoint (a ckpt_*.pt file or a run folder), with its trained weights."""
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    cfg = config_from_dict(config_of(state, path))
    method = build_method(cfg)
    weights = {k[len("method."):]: v for k, v in state["model"].items() if k.startswith("method.")}
    method.load_state_dict(weights)
    method.eval()
    meta = {"step": state.get("step"), "epoch": state.get("epoch"), "recipe": cfg.recipe}
    return TrainedModel(method, getattr(method, method.eval_encoder), cfg, meta)


@dataclass
class Images:
    """images: (B, 3, H, W) normalised as the encoder sees them; labels (B,); mean, std: (3,)
    the normalisation; class_names: name of each label; indices: (B,) their places in the split."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    class_names: list[str]
    indices: np.ndarray | None = None

    def pixels(self, normalised: torch.Tensor | None = None) -> np.ndarray:
        """(B, H, W, 3) in [0, 1]: `normalised` images (default: these) mapped back to RGB; NaN -> grey."""
        x = self.images if normalised is None else normalised
        x = x.detach().float().cpu() * self.std.view(1, 3, 1, 1) + self.mean.view(1, 3, 1, 1)
        x = torch.nan_to_num(x, nan=0.5)  # NaN marks hidden pixels (masked patches): grey
        return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def load_test_images(name: str, root: str | None, img_size: int, indices=None, count: int | None = None,
                seed: int = 0, columns=None) -> Images:
    """Eval-transformed test images: those at `indices`, or `count` drawn at random (seeded)."""
    raw = load_dataset(name, "test", root, columns=columns)
    if indices is None:
        chosen = np.random.default_rng(seed).choice(len(raw), min(count or len(raw), len(raw)), replace=False)
        indices = np.sort(chosen)
    mean, std = dataset_stats(name)
    transform = eval_transform(img_size, mean, std, eval_crop_fraction(name))
    images, labels, kept = [], [], []
    for index in indices:
        sample = raw[int(index)]
        if isinstance(sample, BadSample):
            continue  # an undecodable file is left out of the pictures, as evaluation leaves it out
        images.append(transform(sample[0]))
        labels.append(int(sample[1]))
        kept.append(int(index))
    if not images:
        raise DataError(f"none of the {len(indices)} chosen {name} test images could be read")
    return Images(torch.stack(images), torch.tensor(labels), torch.tensor(mean, dtype=torch.float32),
                  torch.tensor(std, dtype=torch.float32), list(raw.classes), np.array(kept))


def class_sample(labels: np.ndarray, num_classes: int = 10, per_class: int = 100, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to `per_class` items of each of `num_classes` classes drawn at random."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    present = np.unique(labels[labels >= 0])  # negative labels: unlabeled images
    classes = rng.choice(present, min(num_classes, len(present)), replace=False)
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        picked.append(rng.choice(members, min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def load_test_labels(name: str, root: str | None, columns=None) -> np.ndarray:
    return np.asarray(load_dataset(name, "test", root, columns=columns).labels)


@torch.no_grad()
def encode(encoder: Encoder, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """{'cls': (N, D), 'mean': (N, D)} float32 features of unmasked images; a ResNet's only 'cls'
    (its pooled output: the mean over its last stage would be the same numbers)."""
    device = next(encoder.parameters()).device
    encoded = encoder.forward_masked(images.to(device), None)
    if isinstance(encoder, ResNetEncoder):
        return {"cls": encoded.cls.float().cpu()}
    return {"cls": encoded.cls.float().cpu(), "mean": encoded.tokens.mean(dim=1).float().cpu()}


def sample_features(encoder: Encoder, name: str, root: str | None, img_size: int, indices,
                    chunk: int = 256, columns=None
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str], np.ndarray]:
    """Features ('cls', 'mean'), labels, class names and split indices of the readable test images
    at `indices`, read `chunk` at a time."""
    parts, labels, kept, names = [], [], [], []
    for start in range(0, len(indices), chunk):
        batch = load_test_images(name, root, img_size, indices=indices[start:start + chunk], columns=columns)
        parts.append(encode(encoder, batch.images))
        labels.append(batch.labels)
        kept.append(batch.indices)
        names = batch.class_names
    features = {pool: torch.cat([p[pool] for p in parts]) for pool in parts[0]}
    return features, torch.cat(labels), names, np.concatenate(kept)
