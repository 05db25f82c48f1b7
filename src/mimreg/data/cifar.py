"""CIFAR-10 and CIFAR-100 from the extracted python-pickle archives."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimreg.data.arrays import ArrayDataset
from mimreg.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    title: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: str


CIFAR10 = CifarLayout(
    title="CIFAR-10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    meta_file="batches.meta", label_key="labels", names_key="label_names", torchvision_class="CIFAR10",
)
CIFAR100 = CifarLayout(
    title="CIFAR-100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
    train_files=("train",), test_files=("test",),
    meta_file="meta", label_key="fine_labels", names_key="fine_label_names", torchvision_class="CIFAR100",
)


try:  # numpy 2 (numpy.core is a deprecated alias there)
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

# The only globals a CIFAR batch or meta file refers to: the parts of a numpy array's pickle, under
# numpy 1's and numpy 2's module paths (_frombuffer is protocol 5's form). Dicts, lists, bytes and
# ints need no global. Anything else (os.system, builtins.exec, ...) is how a pickle runs code.
NUMPY_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes, numbers and numpy arrays, and refuses every
    other global: a dataset folder from an untrusted source cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR file holds; "
                                         "refused, since unpickling it could run code")
        return NUMPY_GLOBALS[module, name]


def read_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys (the originals are python-2 pickles with bytes keys),
    read by NumpyOnlyUnpickler."""
    try:
        with open(path, "rb") as f:
            content = NumpyOnlyUnpickler(f, encoding="bytes").load()
    # A damaged or foreign pickle can fail with almost any exception type.
    except Exception as exc:
        raise DataError(
            f"Cannot read CIFAR file {path} ({exc}). Delete it and re-extract the archive."
        ) from exc
    if not isinstance(content, dict):
        raise DataError(f"CIFAR file {path} does not hold a dict. Delete it and re-extract the archive.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def field(content: dict, key: str, path: Path):
    if key not in content:
        raise DataError(f"CIFAR file {path} has no '{key}' entry. Delete it and re-extract the archive.")
    return content[key]


def find_cifar(layout: CifarLayout, root: Path, download: bool) -> Path:
    """The folder holding the pickles: ROOT/<folder>, or ROOT itself if it is that folder."""
    folder = root / layout.folder
    if (folder / layout.meta_file).is_file():
        return folder
    if (root / layout.meta_file).is_file():
        return root
    if not download:
        raise DataError(
            f"{layout.title} not found: looked for {folder / layout.meta_file}. Pass "
            f"data.download: true (needs internet) or extract {layout.archive} into {root} "
            f"(it unpacks to {layout.folder}/)."
        )
    import torchvision.datasets  # only needed for downloading

    try:
        getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=True, download=True)
    except Exception as exc:  # network failures surface as many types (URLError, OSError, ...)
        raise DataError(
            f"Downloading {layout.title} into {root} failed ({exc}). Check internet access, or put "
            f"the extracted archive at {folder} and retry."
        ) from exc
    return folder


def read_cifar(layout: CifarLayout, split: str, root: Path, download: bool) -> ArrayDataset:
    folder = find_cifar(layout, root, download)
    meta_path = folder / layout.meta_file
    classes = [n.decode() if isinstance(n, bytes) else str(n)
               for n in field(read_pickle(meta_path), layout.names_key, meta_path)]
    images, labels = [], []
    for name in layout.test_files if split == "test" else layout.train_files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{layout.title} file {path} is missing. Re-extract the archive into {root}.")
        content = read_pickle(path)
        data = np.asarray(field(content, "data", path), dtype=np.uint8)
        batch_labels = np.asarray(field(content, layout.label_key, path), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise DataError(
                f"{layout.title} file {path} holds data of shape {data.shape} with {len(batch_labels)} "
                "labels, expected (N, 3072) and N labels. Delete it and re-extract the archive."
            )
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= len(classes)):
            raise DataError(
                f"{layout.title} file {path} has labels outside 0..{len(classes) - 1}. "
                "Delete it and re-extract the archive."
            )
        images.append(data)
        labels.append(batch_labels)
    # Rows are channel-major 32x32 planes; store as HWC once so each item is a plain view.
    pixels = np.ascontiguousarray(np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ArrayDataset(pixels, np.concatenate(labels), classes, layout="HWC")


def load_cifar10(split: str, root: Path, *, download: bool = False, skip_bad_images: bool = False):
    return read_cifar(CIFAR10, split, root, download)


def load_cifar100(split: str, root: Path, *, download: bool = False, skip_bad_images: bool = False):
    return read_cifar(CIFAR100, split, root, download)
