"""Batching that tolerates undecodable images (BadSample entries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from mimreg.data.base import BadSample


@dataclass
class Batch:
    """Stacked good samples of one loader batch, plus the files that were skipped.

    `images` is None when every sample of the batch was bad; callers skip such batches
    (and may log `bad_files`).
    """

    images: torch.Tensor | list[torch.Tensor] | None  # (B, 3, H, W), or one such tensor per view
    labels: torch.Tensor
    bad_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def pin_memory(self) -> "Batch":
        # DataLoader(pin_memory=True) calls this on custom batch types.
        images = self.images
        if isinstance(images, list):
            images = [view.pin_memory() for view in images]
        elif images is not None:
            images = images.pin_memory()
        return Batch(images, self.labels.pin_memory(), self.bad_files)


def collate_skipping_bad(samples: Sequence[tuple[torch.Tensor, int] | BadSample]) -> Batch:
    """Drop BadSample entries and stack the rest into a Batch (images None if none are left)."""
    good = [s for s in samples if not isinstance(s, BadSample)]
    bad_files = [s.path for s in samples if isinstance(s, BadSample)]
    labels = torch.tensor([int(label) for _, label in good], dtype=torch.int64)
    if not good:
        images = None
    elif isinstance(good[0][0], (list, tuple)):  # several views per image -> one batch tensor per view
        images = [torch.stack([views[v] for views, _ in good]) for v in range(len(good[0][0]))]
    else:
        images = torch.stack([image for image, _ in good])
    return Batch(images=images, labels=labels, bad_files=bad_files)
