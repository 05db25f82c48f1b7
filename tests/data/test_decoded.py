"""Decoding a pretraining pool into one uint8 tensor: the same pixels the PIL path sees, a cache
of decoded files that is reused, rebuilt when a file changes and written atomically."""

import os

import numpy as np
import pytest
import torch

from mimreg.data import load_dataset
from mimreg.data import decoded as decoded_module
from mimreg.data.decoded import MixedSizesError, decode_images, decoded_nbytes
from mimreg.errors import DataError


def pil_pixels(raw) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(raw[i][0])).permute(2, 0, 1) for i in range(len(raw))])


@pytest.mark.parametrize("name", ["cifar10", "stl10", "synthetic"])
def test_array_datasets_decode_to_the_pixels_of_the_pil_path(name, request):
    root = None if name == "synthetic" else request.getfixturevalue(f"{name}_root").root
    raw = load_dataset(name, "pretrain", root)  # stl10: train + unlabelled, stored column-major
    if name == "synthetic":
        raw = raw.subset([7, 3, 300])
    decoded = decode_images(raw, None, name)
    assert decoded.pixels.dtype == torch.uint8 and decoded.bad_files == {}
    assert torch.equal(decoded.pixels, pil_pixels(raw))
    assert decoded_nbytes(raw) == decoded.pixels.numel()


def image_folder(root, write_image, sizes=None):
    colours = [(10 * k, 200 - 10 * k, 40) for k in range(6)]
    for k, colour in enumerate(colours):
        write_image(root / f"class{k % 2}" / f"img{k}.png", colour=colour, size=(sizes or {}).get(k, (20, 16)))
    return root


def test_decoded_files_are_cached_reused_and_rebuilt_when_a_file_changes(tmp_path, write_image, monkeypatch):
    root = image_folder(tmp_path / "images", write_image)
    cache = tmp_path / "cache"
    raw = load_dataset("imagefolder", "pretrain", root)
    first = decode_images(raw, cache, "imagefolder-pretrain")
    assert torch.equal(first.pixels, pil_pixels(raw)) and first.pixels.shape == (6, 3, 16, 20)
    assert decoded_nbytes(raw) == first.pixels.numel()  # from the first file's header
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("imagefolder-pretrain-")  # no temporary left

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is current")

    monkeypatch.setattr(decoded_module, "_decode_each", no_decoding)
    assert torch.equal(decode_images(raw, cache, "imagefolder-pretrain").pixels, first.pixels)
    monkeypatch.undo()

    changed = write_image(root / "class1" / "img3.png", colour=(1, 2, 3), size=(20, 16))
    os.utime(changed, ns=(1, 1))  # a rewrite within the mtime resolution still changes the record
    again = decode_images(raw, cache, "imagefolder-pretrain")
    index = [os.fsdecode(p) for p in raw.paths].index(str(changed))
    assert again.pixels[index, :, 0, 0].tolist() == [1, 2, 3]
    assert len(list(cache.iterdir())) == 1  # replaced, not added
    subset = raw.subset([0, 2])  # another list of files: its own entry
    assert torch.equal(decode_images(subset, cache, "imagefolder-pretrain").pixels, again.pixels[[0, 2]])
    assert len(list(cache.iterdir())) == 2


def test_images_of_mixed_sizes_are_refused(tmp_path, write_image):
    root = image_folder(tmp_path / "images", write_image, sizes={4: (24, 16)})
    with pytest.raises(MixedSizesError, match="one size.*data.pipeline: loader"):
        decode_images(load_dataset("imagefolder", "pretrain", root), tmp_path / "cache", "x")
    assert not (tmp_path / "cache").exists()


def test_undecodable_files_are_recorded_or_refused(tmp_path, write_image, truncated_jpeg):
    root = image_folder(tmp_path / "images", write_image)
    bad = root / "class0" / "broken.jpg"
    bad.write_bytes(truncated_jpeg)
    with pytest.raises(DataError, match="broken.jpg could not be decoded"):
        decode_images(load_dataset("imagefolder", "pretrain", root), tmp_path / "cache", "x")
    raw = load_dataset("imagefolder", "pretrain", root, skip_bad_images=True)
    decoded = decode_images(raw, tmp_path / "cache", "x")
    index = [os.fsdecode(p) for p in raw.paths].index(str(bad))
    assert decoded.bad_files == {index: str(bad)}
    assert decode_images(raw, tmp_path / "cache", "x").bad_files == {index: str(bad)}  # kept in the cache


def test_a_cache_that_cannot_be_written_names_the_file_and_the_setting(tmp_path, write_image):
    raw = load_dataset("imagefolder", "pretrain", image_folder(tmp_path / "images", write_image))
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(DataError, match=r"cannot write .*cache.*imagefolder-pretrain-.*; or set data\.cache_dir"):
        decode_images(raw, blocked, "imagefolder-pretrain")
