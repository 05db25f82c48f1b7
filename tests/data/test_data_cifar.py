import io
import os
import pickle

import numpy as np
import pytest
import torchvision.datasets

from mimreg.data import load_dataset
from mimreg.errors import DataError


def as_arrays(dataset):
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return images, np.array(labels)


@pytest.mark.parametrize("split", ["pretrain", "train"])
def test_cifar10_train_pixels_labels_and_classes(cifar10_root, split):
    dataset = load_dataset("cifar10", split, cifar10_root.root)
    assert len(dataset) == 15
    assert dataset.num_classes == 10
    assert dataset.classes == cifar10_root.classes
    images, labels = as_arrays(dataset)
    assert all(img.mode == "RGB" and img.size == (32, 32) for img in images)
    np.testing.assert_array_equal(np.stack([np.asarray(img) for img in images]), cifar10_root.train_images)
    np.testing.assert_array_equal(labels, cifar10_root.train_labels)
    np.testing.assert_array_equal(dataset.labels, cifar10_root.train_labels)
    assert dataset.labels.dtype == np.int64
    assert isinstance(dataset[0][1], int)


def test_cifar10_test_split(cifar10_root):
    dataset = load_dataset("cifar10", "test", cifar10_root.root)
    images, labels = as_arrays(dataset)
    np.testing.assert_array_equal(np.stack([np.asarray(img) for img in images]), cifar10_root.test_images)
    np.testing.assert_array_equal(labels, cifar10_root.test_labels)


def test_cifar10_root_may_be_the_batches_folder(cifar10_root):
    dataset = load_dataset("cifar10", "test", cifar10_root.root / "cifar-10-batches-py")
    assert len(dataset) == 4


def test_cifar100_uses_fine_labels(cifar100_root):
    train = load_dataset("cifar100", "train", cifar100_root.root)
    test = load_dataset("cifar100", "test", cifar100_root.root)
    assert train.num_classes == 100 and train.classes[42] == "c100_42"
    np.testing.assert_array_equal(train.labels, cifar100_root.train_labels)
    np.testing.assert_array_equal(test.labels, cifar100_root.test_labels)
    np.testing.assert_array_equal(np.asarray(test[1][0]), cifar100_root.test_images[1])


@pytest.mark.parametrize("name, folder",
                         [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_names_path_and_fix(tmp_path, name, folder):
    with pytest.raises(DataError) as info:
        load_dataset(name, "train", tmp_path)
    message = str(info.value)
    assert str(tmp_path / folder) in message
    assert "data.download: true" in message


def test_download_goes_through_torchvision_then_reads(tmp_path, cifar10_root, monkeypatch):
    target = tmp_path / "fresh-root"
    target.mkdir()
    calls = []

    def fake_cifar10(root, train, download):
        # Stands in for the real download: makes the extracted folder appear under root.
        calls.append((root, download))
        (target / "cifar-10-batches-py").symlink_to(cifar10_root.root / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    dataset = load_dataset("cifar10", "test", target, download=True)
    assert calls == [(str(target), True)]
    assert len(dataset) == 4
    load_dataset("cifar10", "test", target, download=True)
    assert len(calls) == 1, "data already present must not be downloaded again"


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError, match="network is unreachable"):
        load_dataset("cifar100", "train", tmp_path, download=True)


def test_corrupt_batch_names_the_file(cifar10_root):
    broken = cifar10_root.root / "cifar-10-batches-py" / "data_batch_3"
    broken.write_bytes(b"\x80\x02 this is not a pickle")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "train", cifar10_root.root)
    assert str(broken) in str(info.value)


def test_wrong_shape_names_the_file(cifar10_root):
    broken = cifar10_root.root / "cifar-10-batches-py" / "test_batch"
    with open(broken, "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataError, match="3072") as info:
        load_dataset("cifar10", "test", cifar10_root.root)
    assert str(broken) in str(info.value)


# ---------------------------------------------------------------- untrusted pickles
class Python2Pickler(pickle._Pickler):
    """Writes bytes as python-2 `str` opcodes (BINSTRING), as the cPickle that made the CIFAR
    archives did; python 3's protocol 2 would call _codecs.encode instead."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        n = len(obj)
        opcode = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little")
        self.write(opcode + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def write_original_format(path, content: dict) -> bytes:
    """A pickle laid out as the CIFAR-10 python archive's: protocol 2, bytes as python-2 str,
    numpy arrays through numpy.core.multiarray._reconstruct (numpy 1's path)."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(content)
    raw = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)
    return raw


def test_batch_in_the_original_format_loads(cifar10_root):
    folder = cifar10_root.root / "cifar-10-batches-py"
    rows = cifar10_root.test_images.transpose(0, 3, 1, 2).reshape(4, -1)
    raw = write_original_format(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"labels": [3, 1, 4, 1], b"data": rows,
        b"filenames": [f"img_{i}.png".encode() for i in range(4)]})
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and pickle.BINSTRING in raw
    write_original_format(folder / "batches.meta", {
        b"label_names": [c.encode() for c in cifar10_root.classes], b"num_cases_per_batch": 10000,
        b"num_vis": 3072})
    dataset = load_dataset("cifar10", "test", cifar10_root.root)
    images, labels = as_arrays(dataset)
    np.testing.assert_array_equal(np.stack([np.asarray(img) for img in images]), cifar10_root.test_images)
    np.testing.assert_array_equal(labels, [3, 1, 4, 1])
    assert dataset.classes == cifar10_root.classes


class RunsCode:
    """Unpickled, calls `call(argument)`: how a crafted pickle runs code."""

    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


@pytest.mark.parametrize("file", ["batches.meta", "test_batch"])
@pytest.mark.parametrize("how", ["os.system", "builtins.exec"])
def test_pickle_that_runs_code_is_refused_naming_the_file(cifar10_root, tmp_path, file, how):
    marker = tmp_path / "marker"
    payload = (RunsCode(os.system, f"touch {marker}") if how == "os.system"
               else RunsCode(exec, f"open({str(marker)!r}, 'w').close()"))
    path = cifar10_root.root / "cifar-10-batches-py" / file
    with open(path, "wb") as f:
        pickle.dump({b"label_names": payload, b"data": payload, b"labels": [0]}, f, protocol=4)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", cifar10_root.root)
    assert str(path) in str(info.value) and ("system" in str(info.value) or "exec" in str(info.value))
    assert not marker.exists()
