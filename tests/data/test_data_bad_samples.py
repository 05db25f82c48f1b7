import pytest
import torch
from torch.utils.data import DataLoader

from mimreg.data import (
    BadSample,
    Batch,
    TransformedDataset,
    collate_skipping_bad,
    eval_transform,
    load_dataset,
)


@pytest.fixture
def tree(tmp_path, write_image, truncated_jpeg):
    """Class a: good, garbage bytes; class b: truncated JPEG, good."""
    write_image(tmp_path / "a" / "0_good.jpg")
    (tmp_path / "a" / "1_bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2_truncated.jpg").write_bytes(truncated_jpeg)
    write_image(tmp_path / "b" / "3_good.png")
    return tmp_path


def test_skip_bad_images_returns_bad_sample_with_path(tree):
    dataset = load_dataset("imagefolder", "train", tree, skip_bad_images=True)
    assert dataset[1] == BadSample(str(tree / "a" / "1_bad.jpg"))
    assert dataset[2] == BadSample(str(tree / "b" / "2_truncated.jpg"))
    assert dataset[3][1] == 1


def test_collate_drops_bad_samples_and_reports_them(tree):
    raw = load_dataset("imagefolder", "train", tree, skip_bad_images=True)
    dataset = TransformedDataset(raw, eval_transform(8), seed=0)
    assert isinstance(dataset[1], BadSample)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_skipping_bad)))
    assert isinstance(batch, Batch)
    assert batch.images.shape == (2, 3, 8, 8) and batch.images.dtype == torch.float32
    assert batch.labels.tolist() == [0, 1] and batch.labels.dtype == torch.int64
    assert batch.bad_files == [str(tree / "a" / "1_bad.jpg"), str(tree / "b" / "2_truncated.jpg")]
    assert len(batch) == 2


def test_batch_of_only_bad_samples_has_no_images():
    batch = collate_skipping_bad([BadSample("/d/x.jpg"), BadSample("/d/y.jpg")])
    assert batch.images is None
    assert batch.labels.shape == (0,) and batch.labels.dtype == torch.int64
    assert batch.bad_files == ["/d/x.jpg", "/d/y.jpg"]


def test_collate_without_bad_samples_stacks_everything():
    samples = [(torch.full((3, 4, 4), float(i)), i) for i in range(3)]
    batch = collate_skipping_bad(samples)
    assert batch.images.shape == (3, 3, 4, 4) and batch.images[2].eq(2).all()
    assert batch.labels.tolist() == [0, 1, 2] and batch.bad_files == []
