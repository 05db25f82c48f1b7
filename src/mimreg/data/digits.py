"""scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32 RGB (no download)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from mimreg.data.arrays import ArrayDataset

IMAGE_SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), images uint8 (N, 32, 32, 3)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    # 1797 tiny resizes take ~20 ms, so do them once here rather than per item.
    large = np.stack([
        np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
        for img in small
    ])
    rgb = np.repeat(large[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    arrays = (rgb[train_idx], labels[train_idx], rgb[test_idx], labels[test_idx])
    for array in arrays:
        array.setflags(write=False)  # shared between calls through the cache
    return arrays


def load_digits_dataset(split: str, root=None, *, download: bool = False,
                        skip_bad_images: bool = False) -> ArrayDataset:
    train_images, train_labels, test_images, test_labels = digits_arrays()
    classes = [str(d) for d in range(10)]
    if split == "test":
        return ArrayDataset(test_images, test_labels, classes)
    return ArrayDataset(train_images, train_labels, classes)
