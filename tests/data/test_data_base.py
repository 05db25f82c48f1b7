import numpy as np
import pytest

from mimreg.data import RawDataset, load_dataset
from mimreg.data.arrays import ArrayDataset


def test_subset_keeps_labels_classes_and_order():
    full = load_dataset("synthetic", "test")
    subset = full.subset([5, 2, -1])
    assert isinstance(subset, RawDataset)
    assert subset.classes == full.classes and subset.num_classes == 10
    np.testing.assert_array_equal(subset.labels, full.labels[[5, 2, 255]])
    np.testing.assert_array_equal(np.asarray(subset[2][0]), np.asarray(full[255][0]))
    nested = subset.subset([1])
    assert nested.parent is full
    assert nested[0][1] == full[2][1]


def test_subset_rejects_out_of_range_indices():
    with pytest.raises(IndexError):
        load_dataset("synthetic", "test").subset([256])


@pytest.mark.parametrize("layout", ["HWC", "CHW", "CWH"])
def test_array_layouts_give_the_same_image(layout):
    hwc = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    stored = {"HWC": hwc, "CHW": hwc.transpose(0, 3, 1, 2), "CWH": hwc.transpose(0, 3, 2, 1)}[layout]
    dataset = ArrayDataset(stored, np.array([0, 1]), ["a", "b"], layout=layout)
    image, label = dataset[1]
    assert image.size == (7, 5) and label == 1
    np.testing.assert_array_equal(np.asarray(image), hwc[1])


def test_labels_are_read_only_int64():
    labels = load_dataset("synthetic", "train").labels
    assert labels.dtype == np.int64
    with pytest.raises(ValueError):
        labels[0] = 3
