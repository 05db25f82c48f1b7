"""Frozen features on disk: one raw float32 file per (split, pool), appended batch by batch while
embedding and read back memory-mapped, so the features of 1.28M images never sit in host memory at
once; the consumers (k-NN, the SGD/LARS probes) read them a chunk at a time.

float32, not float16: the stored rows are bit-identical to the in-memory path's, so both give the
same numbers; ImageNet-1k with ViT-B (1.28M x 768) takes 3.9 GB of disk per pool.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mimreg.errors import MimregError

# Splits with more images than this go to disk when no --feature-store is given: 200k x 768
# float32 is 0.6 GB per pool, past which holding every pool in memory starts to matter.
STORE_ABOVE = 200_000


class FeatureWriter:
    """Appends the pooled features of each batch to STORE/<split>_<pool>.f32."""

    def __init__(self, folder: str | Path, split: str, pools: tuple[str, ...]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.files = {pool: open(self.folder / f"{split}_{pool}.f32", "wb") for pool in pools}
        self.dims: dict[str, int] = {}
        self.rows = 0

    def append(self, pooled: dict[str, torch.Tensor]) -> None:
        for pool, features in pooled.items():
            rows = features.detach().float().cpu().numpy()
            self.dims[pool] = rows.shape[1]
            self.files[pool].write(np.ascontiguousarray(rows).tobytes())
        self.rows += next(iter(pooled.values())).shape[0]

    def close(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Finish the files; the stored features, memory-mapped (pool -> (N, D) float32)."""
        for handle in self.files.values():
            handle.close()
        np.save(self.folder / f"{self.split}_labels.npy", labels.numpy())
        meta = {"rows": self.rows, "dims": self.dims, "dtype": "float32"}
        (self.folder / f"{self.split}.json").write_text(json.dumps(meta))
        return read_features(self.folder, self.split)[0]


def read_features(folder: str | Path, split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The stored features of `split` (memory-mapped, pages read on use) and its labels."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / f"{split}.json").read_text())
    except FileNotFoundError:
        raise MimregError(f"no stored {split} features in {folder}; embed them first (mimreg eval ... "
                          "--feature-store DIR)") from None
    features = {}
    for pool, dim in meta["dims"].items():
        # Copy-on-write: torch wants a writable array, and nothing here writes back to the file.
        rows = np.memmap(folder / f"{split}_{pool}.f32", dtype=np.float32, mode="c", shape=(meta["rows"], dim))
        features[pool] = torch.from_numpy(rows)
    return features, torch.from_numpy(np.load(folder / f"{split}_labels.npy"))

