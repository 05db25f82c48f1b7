"""data.name hf: Hugging Face `datasets` read from a save_to_disk folder, parquet files or the hub cache."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimreg.config import load_config
from mimreg.data import load_dataset
from mimreg.data.hf import HFColumns
from support import assert_resume_is_exact
from mimreg.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")
COLUMNS = HFColumns(image="img", label="kind")


def pattern(count: int, offset: int = 0) -> np.ndarray:
    n, h, w, c = np.meshgrid(np.arange(count), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return ((n + offset) * 17 + h * 5 + w * 2 + c * 70).astype(np.uint8)


def split(count: int, offset: int = 0, label_feature=None):
    pixels = pattern(count, offset)
    features = datasets.Features({"img": datasets.Image(),
                                  "kind": label_feature or datasets.ClassLabel(names=["cat", "dog", "eel"])})
    rows = {"img": [Image.fromarray(p) for p in pixels], "kind": [i % 3 for i in range(count)]}
    if isinstance(label_feature, datasets.Value) and label_feature.dtype == "string":
        rows["kind"] = [["zebra", "ant"][i % 2] for i in range(count)]
    return datasets.Dataset.from_dict(rows, features=features), pixels


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """The Hugging Face cache of this test only (parquet files are converted to Arrow there)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A save_to_disk folder: 64 train and 6 test images of 32x32, a ClassLabel column."""
    folder = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict({"train": split(64)[0], "test": split(6, offset=100)[0]}).save_to_disk(str(folder))
    return folder


def test_save_to_disk_folder_gives_exact_pixels_labels_and_class_names(saved):
    train = load_dataset("hf", "pretrain", saved, columns=COLUMNS)
    test = load_dataset("hf", "test", saved, columns=COLUMNS)
    assert (len(train), len(test)) == (64, 6)
    assert train.classes == ["cat", "dog", "eel"] and list(test.labels) == [0, 1, 2, 0, 1, 2]
    image, label = test[4]
    assert image.mode == "RGB" and label == 1
    np.testing.assert_array_equal(np.asarray(image), pattern(6, offset=100)[4])


def test_parquet_files_split_by_name_and_a_single_file(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    train, pixels = split(8, label_feature=datasets.Value("string"))
    train.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    split(4, offset=50, label_feature=datasets.Value("string"))[0].to_parquet(str(folder / "test-00000-of-00001.parquet"))
    test = load_dataset("hf", "test", folder, columns=COLUMNS)
    assert len(test) == 4 and test.classes == ["ant", "zebra"]  # text labels: the train split's, sorted
    assert list(test.labels) == [1, 0, 1, 0]
    single = load_dataset("hf", "train", folder / "train-00000-of-00001.parquet", columns=COLUMNS)
    np.testing.assert_array_equal(np.asarray(single[7][0]), pixels[7])
    with pytest.raises(DataError, match=r"has no split 'test' \(its splits: \['train'\]\); set data.hf_test_split"):
        load_dataset("hf", "test", folder / "train-00000-of-00001.parquet", columns=COLUMNS)


def test_missing_column_split_or_data_name_the_setting(saved, tmp_path):
    with pytest.raises(DataError, match=r"no column 'image' \(its columns: \['img', 'kind'\]\); set data.hf_image_column"):
        load_dataset("hf", "train", saved, columns=HFColumns(label="kind"))
    with pytest.raises(DataError, match=r"no column 'label' .* set data.hf_label_column .* or null for unlabelled"):
        load_dataset("hf", "train", saved, columns=HFColumns(image="img"))
    with pytest.raises(DataError, match=r"no split 'val' \(its splits: \['test', 'train'\]\); set data.hf_test_split"):
        load_dataset("hf", "test", saved, columns=HFColumns("img", "kind", test_split="val"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty could not be read as a Hugging Face dataset \(\w+: .*\); set data.root"):
        load_dataset("hf", "train", tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt is a .txt file; data.name=hf reads .parquet, .arrow files"):
        load_dataset("hf", "train", tmp_path / "notes.txt")
    unlabelled = load_dataset("hf", "train", saved, columns=HFColumns("img", None))
    assert unlabelled.classes == [] and set(unlabelled.labels) == {-1}


def test_hub_id_is_read_from_the_cache_and_never_downloaded(tmp_path, hf_cache):
    folder = tmp_path / "pq"
    folder.mkdir()
    split(5)[0].to_parquet(str(folder / "train-0.parquet"))
    datasets.load_dataset(str(folder))  # as a first load_dataset("someone/tiny") leaves the cache
    built = next(p for p in (hf_cache / "pq" / "default").glob("*/*") if p.is_dir())
    cached = hf_cache / "someone___tiny" / "default" / built.parent.name / built.name
    shutil.copytree(built, cached)
    for arrow in cached.glob("pq-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("pq-", "tiny-")))
    assert list(load_dataset("hf", "train", "someone/tiny", columns=COLUMNS).labels) == [0, 1, 2, 0, 1]
    with pytest.raises(DataError, match=r"'someone/absent' is neither a file nor a folder, and no hub dataset .* "
                                        r"not downloaded unless data.download: true"):
        load_dataset("hf", "train", "someone/absent")


def test_missing_extra_is_one_line_naming_it(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails
    with pytest.raises(DataError, match=r"^data.name=hf needs the `datasets` package: pip install 'mimreg\[datasets\]'$"):
        load_dataset("hf", "train", saved)


def test_config_reads_the_image_size_and_refuses_hf_settings_for_other_data(saved):
    cfg = load_config("digits/mae", ["data.name=hf", f"data.root={saved}", "data.hf_image_column=img",
                                     "data.hf_label_column=kind"])
    assert cfg.img_size == 32 and cfg.data.hf_columns() == COLUMNS
    with pytest.raises(ConfigError, match=r"data.hf_label_column is set but data.name is 'digits'; .* drop it"):
        load_config("digits/mae", ["data.hf_label_column=null"])


@pytest.mark.parametrize("pipeline", ["loader", "device"])
def test_pretraining_on_hf_data_resumes_exactly(saved, tmp_path, tiny_config, pipeline):
    sets = ("data.name=hf", f"data.root={saved}", "data.hf_image_column=img", "data.hf_label_column=kind",
            f"data.pipeline={pipeline}", "train.epochs=2", "train.ckpt_every_steps=1")
    assert_resume_is_exact(tiny_config, sets, tmp_path)


def test_auto_pipeline_decodes_a_small_hf_dataset_on_the_device(saved, tiny_config):
    from mimreg.engine.data import build_pretrain_data

    sets = ("data.name=hf", f"data.root={saved}", "data.hf_image_column=img", "data.hf_label_column=kind")
    data = build_pretrain_data(tiny_config("mae", *sets), world=1, rank=0)
    assert data.pipeline == "device"  # 64 images of 32x32 fit data.device_memory_gb
    small = build_pretrain_data(tiny_config("mae", *sets, "data.device_memory_gb=1e-6"), world=1, rank=0)
    assert small.pipeline == "loader"
