import os

import numpy as np
import pytest

from mimreg.data import load_dataset
from mimreg.errors import DataError


@pytest.mark.parametrize("use_parent", [False, True])
def test_train_uses_wnids_order(tiny_imagenet_root, use_parent):
    root = tiny_imagenet_root.base.parent if use_parent else tiny_imagenet_root.base
    train = load_dataset("tiny-imagenet", "train", root)
    assert train.classes == tiny_imagenet_root.wnids
    assert train.num_classes == 3
    assert len(train) == 6
    for i in range(len(train)):
        image, label = train[i]
        assert image.mode == "RGB" and image.size == (64, 64)
        # Train files are named <wnid>_<j>.JPEG by the fixture.
        assert os.path.basename(os.fsdecode(train.paths[i])).startswith(train.classes[label] + "_")
    assert len(load_dataset("tiny-imagenet", "pretrain", root)) == 6


def test_test_split_is_val_labelled_by_annotations(tiny_imagenet_root):
    test = load_dataset("tiny-imagenet", "test", tiny_imagenet_root.base)
    wnids = tiny_imagenet_root.wnids
    assert test.classes == wnids
    expected = [wnids.index(w) for w in tiny_imagenet_root.val_labels.values()]
    np.testing.assert_array_equal(test.labels, expected)
    assert [test[i][1] for i in range(len(test))] == expected


def test_without_wnids_txt_classes_are_sorted_train_folders(tiny_imagenet_root):
    (tiny_imagenet_root.base / "wnids.txt").unlink()
    train = load_dataset("tiny-imagenet", "train", tiny_imagenet_root.base)
    assert train.classes == ["n001", "n002", "n003"]


def test_unknown_wnid_in_annotations_names_file_and_line(tiny_imagenet_root):
    annotations = tiny_imagenet_root.base / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_9.JPEG\tn999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="Line 5") as info:
        load_dataset("tiny-imagenet", "test", tiny_imagenet_root.base)
    assert str(annotations) in str(info.value)


def test_missing_tiny_imagenet_names_both_places_looked(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("tiny-imagenet", "train", tmp_path)
    assert str(tmp_path) in str(info.value)
    assert str(tmp_path / "tiny-imagenet-200") in str(info.value)


def test_classes_are_named_by_words_txt(tiny_imagenet_root):
    """Legends show "goldfish", not n01443537: the first name words.txt gives each wnid; a wnid it
    lacks stays a wnid, and a name two classes share keeps the wnid beside it."""
    (tiny_imagenet_root.base / "words.txt").write_text(
        "n001\tgoldfish, Carassius auratus\nn002\tcrane\nn003\tcrane\nn999\tunused\n")
    for split in ("train", "test"):
        assert load_dataset("tiny-imagenet", split, tiny_imagenet_root.base).classes == [
            "crane (n003)", "goldfish", "crane (n002)"]
    (tiny_imagenet_root.base / "words.txt").write_text("n001\tgoldfish, Carassius auratus\n")
    assert load_dataset("tiny-imagenet", "train", tiny_imagenet_root.base).classes == ["n003", "goldfish", "n002"]
