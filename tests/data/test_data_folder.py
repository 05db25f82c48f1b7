from pathlib import Path

import numpy as np
import pytest

from mimreg.data import load_dataset
from mimreg.data.files import sample_paths
from mimreg.errors import DataError


@pytest.fixture
def make_split_tree(write_image):
    def make(root, split, per_class):
        for name, count in per_class.items():
            for j in range(count):
                write_image(root / split / name / f"{j}.png", colour=(len(name) * 20, j * 40, 0))

    return make


def test_train_and_test_subfolders_share_the_train_mapping(tmp_path, make_split_tree):
    make_split_tree(tmp_path, "train", {"cat": 2, "ant": 1, "dog": 3})
    make_split_tree(tmp_path, "test", {"dog": 1, "cat": 2})  # no "ant" in test
    train = load_dataset("imagefolder", "train", tmp_path)
    test = load_dataset("imagefolder", "test", tmp_path)
    assert train.classes == test.classes == ["ant", "cat", "dog"]
    np.testing.assert_array_equal(train.labels, [0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(test.labels, [1, 1, 2])
    image, label = test[2]
    assert image.mode == "RGB" and image.size == (20, 16) and label == 2
    assert len(load_dataset("imagefolder", "pretrain", tmp_path)) == 6


def test_val_folder_serves_as_test(tmp_path, make_split_tree):
    make_split_tree(tmp_path, "train", {"a": 1, "b": 1})
    make_split_tree(tmp_path, "val", {"b": 2})
    np.testing.assert_array_equal(load_dataset("imagefolder", "test", tmp_path).labels, [1, 1])


def test_test_class_missing_from_train_is_an_error(tmp_path, make_split_tree):
    make_split_tree(tmp_path, "train", {"a": 1})
    make_split_tree(tmp_path, "test", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra") as info:
        load_dataset("imagefolder", "test", tmp_path)
    assert str(tmp_path / "test") in str(info.value)


def test_flat_class_folders_are_train_only(tmp_path, write_image):
    write_image(tmp_path / "b" / "x.JPG")
    write_image(tmp_path / "b" / "nested" / "y.jpeg")
    write_image(tmp_path / "a" / "z.Png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "._z.png").write_bytes(b"macOS resource fork")
    train = load_dataset("imagefolder", "train", tmp_path)
    assert train.classes == ["a", "b"]
    np.testing.assert_array_equal(train.labels, [0, 1, 1])
    assert all(train[i][0].mode == "RGB" for i in range(3))
    with pytest.raises(DataError) as info:
        load_dataset("imagefolder", "test", tmp_path)
    assert str(tmp_path / "train") in str(info.value) and str(tmp_path / "test") in str(info.value)


def test_link_loops_are_not_followed_and_each_file_counts_once(tmp_path, make_split_tree, capsys):
    make_split_tree(tmp_path, "train", {"cat": 3, "dog": 2})
    cat = tmp_path / "train" / "cat"
    (cat / "loop").symlink_to(cat, target_is_directory=True)  # cat/loop/loop/... without end
    (cat / "dogs").symlink_to(tmp_path / "train" / "dog", target_is_directory=True)  # a second way to dog
    (cat / "again.png").symlink_to(cat / "0.png")
    (tmp_path / "train" / "dog" / "cat.png").symlink_to(cat / "1.png")  # a cat image linked into dog
    train = load_dataset("imagefolder", "train", tmp_path)
    assert len(train) == 5
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1])
    assert sorted(Path(p).name for p in sample_paths(train)) == ["0.png", "0.png", "1.png", "1.png", "2.png"]
    err = capsys.readouterr().err
    assert "links to folders already listed were not followed" in err
    assert "links to image files already counted were left out" in err


def test_loose_images_are_unlabelled(tmp_path, write_image):
    write_image(tmp_path / "one.webp")
    write_image(tmp_path / "two.bmp")
    pretrain = load_dataset("imagefolder", "pretrain", tmp_path)
    assert pretrain.num_classes == 0 and pretrain.classes == []
    np.testing.assert_array_equal(pretrain.labels, [-1, -1])
    assert pretrain[1][1] == -1


@pytest.mark.parametrize("layout", ["empty", "empty-classes", "missing"])
def test_no_images_names_the_path(tmp_path, layout):
    root = tmp_path / "images"
    if layout != "missing":
        root.mkdir()
    if layout == "empty-classes":
        (root / "cat").mkdir()
        (root / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        load_dataset("imagefolder", "train", root)
    assert str(root) in str(info.value)


@pytest.fixture
def tree_with_bad_files(tmp_path, write_image, truncated_jpeg):
    write_image(tmp_path / "train" / "a" / "good0.jpg")
    (tmp_path / "train" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "truncated.jpg").write_bytes(truncated_jpeg)
    write_image(tmp_path / "train" / "b" / "z_good1.jpg")
    return tmp_path


@pytest.mark.parametrize("index, name", [(1, "x.jpg"), (2, "truncated.jpg")])
def test_undecodable_file_raises_naming_file_and_fix(tree_with_bad_files, index, name):
    dataset = load_dataset("imagefolder", "train", tree_with_bad_files)
    dataset[0]  # the good file before it still loads
    with pytest.raises(DataError) as info:
        dataset[index]
    message = str(info.value)
    assert name in message and str(tree_with_bad_files) in message
    assert "data.skip_bad_images: true" in message


def write_rgb48_png(path, pixels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): signature, IHDR, one IDAT, IEND."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16_bit_pngs_are_scaled_to_8_bits_not_saturated(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 65536, (12, 10)).astype(np.uint16)
    gray[0, :4] = [0, 255, 256, 65535]
    (tmp_path / "a").mkdir()
    Image.fromarray(gray).save(tmp_path / "a" / "gray16.png")
    assert Image.open(tmp_path / "a" / "gray16.png").mode == "I;16"  # what Pillow makes of it
    rgb = rng.integers(0, 65536, (12, 10, 3)).astype(np.uint16)
    write_rgb48_png(tmp_path / "a" / "rgb48.png", rgb)
    train = load_dataset("imagefolder", "train", tmp_path)
    got = {name: np.asarray(train[i][0]) for i, name in enumerate(["gray16", "rgb48"])}  # sorted paths
    assert all(image.dtype == np.uint8 and image.shape == (12, 10, 3) for image in got.values())
    np.testing.assert_array_equal(got["gray16"], np.repeat((gray >> 8)[..., None], 3, axis=2).astype(np.uint8))
    assert got["gray16"][0, :4, 0].tolist() == [0, 0, 1, 255]
    np.testing.assert_array_equal(got["rgb48"], (rgb >> 8).astype(np.uint8))
    assert (got["gray16"] == 255).mean() < 0.05  # convert("RGB") alone made 99.6% of them 255
