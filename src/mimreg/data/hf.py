"""`hf`: a Hugging Face `datasets` dataset, read where it already is (never downloaded unless asked).

data.root is a `save_to_disk` folder, a parquet/arrow file, a folder of data files (split by the
file names, as the hub lays them out: train-*.parquet, test-*.parquet), or a hub id already in the
local Hugging Face cache. An Arrow-backed dataset has random access, so it is a map-style
RawDataset: a sample is found by its index, as mimreg's exact resume needs.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mimreg.data.base import UNLABELED, BadSample, RawDataset, decode_sample
from mimreg.errors import DataError

MISSING_EXTRA = "data.name=hf needs the `datasets` package: pip install 'mimreg[datasets]'"
DATA_FILE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class HFColumns:
    """Which columns hold the image and the label (None: unlabelled), and the splits' names."""

    image: str = "image"
    label: str | None = "label"
    train_split: str = "train"
    test_split: str = "test"


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(MISSING_EXTRA) from None
    return datasets


class HFImageDataset(RawDataset):
    """The image column of a `datasets.Dataset`, decoded to RGB PIL images on access."""

    def __init__(self, table, image_column: str, labels: np.ndarray, classes: list[str], where: str,
                 skip_bad_images: bool = False):
        super().__init__(labels, classes)
        self.table = table.select_columns([image_column])
        self.image_column = image_column
        self.where = where
        self.skip_bad_images = skip_bad_images

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image = decode_sample(f"{self.where}[{index}]", lambda: as_pil(self.table[int(index)][self.image_column]),
                              self.skip_bad_images)
        return image if isinstance(image, BadSample) else (image, int(self.labels[index]))


def as_pil(value) -> Image.Image:
    """A PIL image from what an image column holds: an Image feature's PIL image, encoded bytes,
    or the {"bytes", "path"} mapping of an undecoded Image feature."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or Path(value["path"]).read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    raise TypeError(f"the column holds {type(value).__name__}, not an image")


def load_hf(split: str, root: Path, *, download: bool = False, skip_bad_images: bool = False,
            columns: HFColumns | None = None) -> RawDataset:
    """The train split (for "pretrain" and "train") or the test split of the dataset at `root`."""
    columns = columns or HFColumns()
    splits = open_splits(os.fspath(root), download)
    train = _split(splits, columns.train_split, "hf_train_split", root)
    table = train if split in ("pretrain", "train") else _split(splits, columns.test_split, "hf_test_split", root)
    for key, column in (("hf_image_column", columns.image), ("hf_label_column", columns.label)):
        if column is not None and column not in table.column_names:
            raise DataError(f"{root} has no column {column!r} (its columns: {table.column_names}); set "
                            f"data.{key} to the one that holds the {key.split('_')[1]}"
                            + (", or null for unlabelled images" if key == "hf_label_column" else ""))
    classes = _class_names(train, columns.label)
    labels = _labels(table, columns.label, classes, root)
    name = columns.train_split if table is train else columns.test_split
    return HFImageDataset(table, columns.image, labels, classes, f"{root}:{name}", skip_bad_images)


def open_splits(root: str, download: bool) -> dict:
    """The dataset's splits by name (a single Dataset, e.g. one parquet file, is the train split)."""
    datasets = import_datasets()
    path = Path(os.path.expanduser(root))
    if path.is_file() and path.suffix not in DATA_FILE_SUFFIXES:
        raise DataError(f"data.root {path} is a {path.suffix or 'suffix-less'} file; data.name=hf reads "
                        f"{', '.join(DATA_FILE_SUFFIXES)} files, save_to_disk folders or cached hub ids")
    with _offline(datasets, not download):
        if not path.exists():
            loaded = _from_hub_cache(datasets, root, download)
        else:
            try:
                loaded = _from_path(datasets, path)
            except Exception as exc:  # the library's own errors, many kinds: said in one line
                reason = (str(exc).strip().splitlines() or [""])[0]
                raise DataError(f"{path} could not be read as a Hugging Face dataset ({type(exc).__name__}: {reason}); "
                                "set data.root to a save_to_disk folder or parquet/arrow files") from exc
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def _from_path(datasets, path: Path):
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    if path.is_file():
        return datasets.load_dataset(DATA_FILE_SUFFIXES[path.suffix], data_files={"train": str(path)})
    return datasets.load_dataset(str(path))  # a folder of data files, split by their names


def _from_hub_cache(datasets, hub_id: str, download: bool):
    try:
        return datasets.load_dataset(hub_id)
    except Exception as exc:  # not cached (offline), unknown id, no network: all mean "not here"
        where = datasets.config.HF_DATASETS_CACHE
        how = ("" if download else "; it is not downloaded unless data.download: true")
        raise DataError(f"data.root {hub_id!r} is neither a file nor a folder, and no hub dataset of that id could "
                        f"be loaded from the Hugging Face cache {where} ({type(exc).__name__}){how}. Set data.root "
                        "to a save_to_disk folder, parquet/arrow files, or a hub id you have loaded before") from None


@contextmanager
def _offline(datasets, offline: bool):
    """`datasets` (and the hub client under it) in offline mode, so nothing is downloaded.
    Their module-level switches are read when a call is made, so they are set for this call only."""
    import huggingface_hub.constants as hub

    # datasets < 3 reads HF_DATASETS_OFFLINE, later versions HF_HUB_OFFLINE (the other kept as an alias)
    switches = [(m, k) for m, k in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                                    (hub, "HF_HUB_OFFLINE")) if hasattr(m, k)]
    saved = [getattr(m, k) for m, k in switches]
    for module, key in switches:
        setattr(module, key, offline or getattr(module, key))
    try:
        yield
    finally:
        for (module, key), value in zip(switches, saved):
            setattr(module, key, value)


def _split(splits: dict, name: str, key: str, root) -> object:
    if name not in splits:
        raise DataError(f"{root} has no split {name!r} (its splits: {sorted(splits)}); set data.{key} to one of them")
    return splits[name]


def _class_names(train, label: str | None) -> list[str]:
    """Names from a ClassLabel feature; else the train split's distinct values (sorted) as text."""
    if label is None:
        return []
    feature = train.features[label]
    if hasattr(feature, "names"):
        return list(feature.names)
    values = _column(train, label)
    if values.dtype.kind in "iu":
        return [str(v) for v in range(int(values.max()) + 1)] if len(values) else []
    return sorted({str(v) for v in values})


def _labels(table, label: str | None, classes: list[str], root) -> np.ndarray:
    if label is None:
        return np.full(len(table), UNLABELED)
    values = _column(table, label)
    if values.dtype.kind in "iu":
        labels = values.astype(np.int64)
    else:
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted({str(v) for v in values} - set(index))
        if unknown:
            raise DataError(f"{root}: labels {unknown[:5]} of the test split are not in the train split; "
                            "use the same label values in both")
        labels = np.array([index[str(v)] for v in values], dtype=np.int64)
    labels[labels < 0] = UNLABELED  # ClassLabel's -1: no label
    if len(labels) and labels.max() >= max(len(classes), 1) and classes:
        raise DataError(f"{root}: label {labels.max()} is beyond the train split's {len(classes)} classes")
    return labels


def _column(table, name: str) -> np.ndarray:
    return np.asarray(table.with_format("numpy", columns=[name])[name])
