"""Procedural 32x32 images in 10 learnable classes, for tests and smoke runs (no files)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mimreg.data.arrays import ArrayDataset

IMAGE_SIZE = 32
NUM_CLASSES = 10
TRAIN_SIZE = 512
TEST_SIZE = 256
TRAIN_SEED, TEST_SEED = 1234, 5678


def class_colours() -> np.ndarray:
    """Ten well-separated RGB colours in [0.15, 0.85] (hues around the colour wheel)."""
    hue = np.arange(NUM_CLASSES, dtype=np.float32) / NUM_CLASSES
    phases = np.array([0.0, 1 / 3, 2 / 3], dtype=np.float32)
    return 0.5 + 0.35 * np.cos(2 * np.pi * (hue[:, None] - phases[None, :]))


def generate(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (N, 32, 32, 3) uint8 with balanced, shuffled labels.

    Class k is a stripe pattern at angle k*18 degrees in its own colour over a dark
    version of it; each image gets a random phase, stripe width, brightness and pixel
    noise, so the classes are learnable but no two images are alike.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % NUM_CLASSES).astype(np.int64)
    angle = labels * (np.pi / NUM_CLASSES) + rng.normal(0, 0.05, count)
    frequency = rng.uniform(3.0, 5.0, count) / IMAGE_SIZE
    phase = rng.uniform(0, 2 * np.pi, count)
    brightness = rng.uniform(0.8, 1.2, count).astype(np.float32)

    coords = np.arange(IMAGE_SIZE, dtype=np.float32)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    cos, sin = (np.cos(angle).astype(np.float32)[:, None, None],
                np.sin(angle).astype(np.float32)[:, None, None])
    wave = (2 * np.pi * frequency).astype(np.float32)[:, None, None] * (cos * xs + sin * ys)
    stripes = 0.5 + 0.5 * np.sin(wave + phase.astype(np.float32)[:, None, None])
    colour = class_colours()[labels] * brightness[:, None]  # (N, 3)
    pixels = colour[:, None, None, :] * (0.35 + 0.65 * stripes[..., None])
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(0.06)
    return np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8), labels


@lru_cache(maxsize=2)
def synthetic_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = generate(TEST_SIZE, TEST_SEED) if split == "test" else generate(TRAIN_SIZE, TRAIN_SEED)
    images.setflags(write=False)  # shared between calls through the cache
    labels.setflags(write=False)
    return images, labels


def load_synthetic(split: str, root=None, *, download: bool = False,
                   skip_bad_images: bool = False) -> ArrayDataset:
    images, labels = synthetic_arrays("test" if split == "test" else "train")
    return ArrayDataset(images, labels, [f"pattern{k}" for k in range(NUM_CLASSES)])
