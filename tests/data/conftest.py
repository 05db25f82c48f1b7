"""Tiny on-disk datasets in the real formats, written fresh for each test."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pattern_images(count: int, height: int, width: int, offset: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3) where every pixel value depends on image, row, column and channel.

    Asymmetric in H and W, so a transposed or channel-swapped read shows up as a mismatch.
    """
    n, h, w, c = np.meshgrid(np.arange(count), np.arange(height), np.arange(width), np.arange(3),
                             indexing="ij")
    return ((n + offset) * 17 + h * 5 + w * 2 + c * 70).astype(np.uint8)


def write_image(path: Path, colour=(200, 30, 30), size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture(name="write_image")
def write_image_fixture():
    """write_image(path, colour=(r, g, b), size=(w, h)): a solid image in the format of path's suffix."""
    return write_image


@pytest.fixture
def truncated_jpeg() -> bytes:
    """The first half of a valid JPEG: Pillow opens it, then fails while decoding."""
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), (200, 30, 30)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@dataclass
class FakeArrays:
    root: Path
    train_images: np.ndarray  # (N, H, W, 3), what the loader should give back
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    unlabeled_images: np.ndarray | None = None


def _to_cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _dump(path: Path, content: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f)


@pytest.fixture
def cifar10_root(tmp_path) -> FakeArrays:
    """cifar-10-batches-py with 5 train batches of 3 images and a test batch of 4."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    classes = [f"c10_{k}" for k in range(10)]
    train = pattern_images(15, 32, 32)
    train_labels = np.arange(15) % 10
    for b in range(5):
        rows = slice(3 * b, 3 * b + 3)
        _dump(folder / f"data_batch_{b + 1}",
              {b"data": _to_cifar_rows(train[rows]), b"labels": train_labels[rows].tolist()})
    test = pattern_images(4, 32, 32, offset=100)
    test_labels = np.array([9, 0, 5, 5])
    _dump(folder / "test_batch", {b"data": _to_cifar_rows(test), b"labels": test_labels.tolist()})
    _dump(folder / "batches.meta", {b"label_names": [c.encode() for c in classes]})
    return FakeArrays(tmp_path, train, train_labels, test, test_labels, classes)


@pytest.fixture
def cifar100_root(tmp_path) -> FakeArrays:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    classes = [f"c100_{k}" for k in range(100)]
    train, train_labels = pattern_images(6, 32, 32), np.array([0, 99, 42, 7, 7, 1])
    test, test_labels = pattern_images(2, 32, 32, offset=50), np.array([98, 3])
    _dump(folder / "train", {b"data": _to_cifar_rows(train), b"fine_labels": train_labels.tolist(),
                             b"coarse_labels": [0] * 6})
    _dump(folder / "test", {b"data": _to_cifar_rows(test), b"fine_labels": test_labels.tolist(),
                            b"coarse_labels": [0] * 2})
    _dump(folder / "meta", {b"fine_label_names": [c.encode() for c in classes],
                            b"coarse_label_names": [b"x"] * 20})
    return FakeArrays(tmp_path, train, train_labels, test, test_labels, classes)


def _to_stl_bytes(images: np.ndarray) -> bytes:
    # STL-10 stores each channel column-major: (N, C, W, H) in C order.
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


@pytest.fixture
def stl10_root(tmp_path) -> FakeArrays:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    train, train_labels = pattern_images(3, 96, 96), np.array([0, 9, 4])
    test, test_labels = pattern_images(2, 96, 96, offset=10), np.array([1, 2])
    unlabeled = pattern_images(4, 96, 96, offset=20)
    (folder / "train_X.bin").write_bytes(_to_stl_bytes(train))
    (folder / "train_y.bin").write_bytes((train_labels + 1).astype(np.uint8).tobytes())
    (folder / "test_X.bin").write_bytes(_to_stl_bytes(test))
    (folder / "test_y.bin").write_bytes((test_labels + 1).astype(np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(_to_stl_bytes(unlabeled))
    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    return FakeArrays(tmp_path, train, train_labels, test, test_labels, classes, unlabeled)


@dataclass
class FakeTinyImagenet:
    base: Path  # the tiny-imagenet-200 folder
    wnids: list[str]
    val_labels: dict[str, str]  # file name -> wnid


@pytest.fixture
def tiny_imagenet_root(tmp_path) -> FakeTinyImagenet:
    """tiny-imagenet-200 with 3 classes, 2 train images each, 4 val images (wnids.txt unsorted)."""
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n003", "n001", "n002"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, wnid in enumerate(wnids):
        for j in range(2):
            write_image(base / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", colour=(k * 80, j * 90, 10),
                        size=(64, 64))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    val_labels = {"val_0.JPEG": "n002", "val_1.JPEG": "n003", "val_2.JPEG": "n001", "val_3.JPEG": "n002"}
    lines = []
    for name, wnid in val_labels.items():
        write_image(base / "val" / "images" / name, size=(64, 64))
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return FakeTinyImagenet(base, wnids, val_labels)
