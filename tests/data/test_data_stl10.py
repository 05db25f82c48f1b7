import pickle

import numpy as np
import pytest

from mimreg.data import load_dataset
from mimreg.errors import DataError


def pixels(dataset):
    return np.stack([np.asarray(dataset[i][0]) for i in range(len(dataset))])


def test_train_undoes_column_major_storage_and_shifts_labels(stl10_root):
    train = load_dataset("stl10", "train", stl10_root.root)
    assert train.classes == stl10_root.classes and train.num_classes == 10
    assert train[0][0].mode == "RGB" and train[0][0].size == (96, 96)
    np.testing.assert_array_equal(pixels(train), stl10_root.train_images)
    np.testing.assert_array_equal(train.labels, stl10_root.train_labels)
    assert [train[i][1] for i in range(3)] == stl10_root.train_labels.tolist()


def test_test_split(stl10_root):
    test = load_dataset("stl10", "test", stl10_root.root)
    np.testing.assert_array_equal(pixels(test), stl10_root.test_images)
    np.testing.assert_array_equal(test.labels, stl10_root.test_labels)


def test_pretrain_is_train_then_unlabeled_with_label_minus_one(stl10_root):
    pretrain = load_dataset("stl10", "pretrain", stl10_root.root)
    assert len(pretrain) == 3 + 4
    assert pretrain.num_classes == 10
    np.testing.assert_array_equal(pretrain.labels, [0, 9, 4, -1, -1, -1, -1])
    np.testing.assert_array_equal(
        pixels(pretrain), np.concatenate([stl10_root.train_images, stl10_root.unlabeled_images]))
    assert pretrain[5][1] == -1
    assert pretrain[-1][1] == -1


def test_unlabeled_images_are_mapped_not_copied_into_pickles(stl10_root):
    pretrain = load_dataset("stl10", "pretrain", stl10_root.root)
    unlabeled_bytes = stl10_root.unlabeled_images.nbytes
    # What DataLoader workers receive under `spawn`: the file path, not the pixels.
    copy = pickle.loads(pickle.dumps(pretrain))
    assert len(pickle.dumps(pretrain)) < 3 * 96 * 96 * 3 + unlabeled_bytes // 2
    np.testing.assert_array_equal(np.asarray(copy[6][0]), stl10_root.unlabeled_images[3])


def test_missing_stl10_names_path_and_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("stl10", "train", tmp_path)
    assert str(tmp_path / "stl10_binary" / "train_X.bin") in str(info.value)
    assert "data.download: true" in str(info.value)


def test_truncated_image_file_names_the_file(stl10_root):
    broken = stl10_root.root / "stl10_binary" / "test_X.bin"
    broken.write_bytes(broken.read_bytes()[:-5])
    with pytest.raises(DataError) as info:
        load_dataset("stl10", "test", stl10_root.root)
    assert str(broken) in str(info.value)


def test_label_count_mismatch_names_the_file(stl10_root):
    labels = stl10_root.root / "stl10_binary" / "train_y.bin"
    labels.write_bytes(bytes([1, 2]))
    with pytest.raises(DataError) as info:
        load_dataset("stl10", "train", stl10_root.root)
    assert str(labels) in str(info.value)
