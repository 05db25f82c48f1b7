import pytest

from mimreg.data import DATASET_NAMES, SPLITS, load_dataset
from mimreg.errors import DataError


def test_dataset_names_and_splits():
    assert DATASET_NAMES == ("cifar10", "cifar100", "stl10", "tiny-imagenet", "imagenet", "imagenet100",
                             "imagefolder", "hf", "webdataset", "digits", "synthetic")
    assert SPLITS == ("pretrain", "train", "test")


def test_unknown_name_lists_every_choice():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet-22k", "train", "/nowhere")
    message = str(info.value)
    assert "imagenet-22k" in message
    for name in DATASET_NAMES:
        assert name in message


def test_unknown_split_lists_every_choice():
    with pytest.raises(DataError) as info:
        load_dataset("synthetic", "validation")
    assert "validation" in str(info.value)
    for split in SPLITS:
        assert split in str(info.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "tiny-imagenet", "imagefolder"])
def test_file_datasets_need_a_root(name):
    with pytest.raises(DataError, match="data.root"):
        load_dataset(name, "train")


def test_builtin_datasets_ignore_root(tmp_path):
    dataset = load_dataset("synthetic", "train", tmp_path / "does-not-exist")
    assert len(dataset) == 512


def test_root_with_tilde_is_expanded(tmp_path, monkeypatch, cifar10_root):
    monkeypatch.setenv("HOME", str(cifar10_root.root))
    assert len(load_dataset("cifar10", "test", "~")) == 4
