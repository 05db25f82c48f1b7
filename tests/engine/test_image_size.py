"""The image size in force: given, the dataset's own, or read from an image folder's files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mimreg.config import load_config
from mimreg.engine.run_info import start_facts, token_grid
from mimreg.errors import ConfigError, DataError


def image_folder(root: Path, sizes: dict[str, tuple[int, int]], per_class: int = 3) -> Path:
    """root/<class>/<i>.png, every image of a class of that class's (width, height)."""
    for name, size in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, (40 * i, 90, 200)).save(root / name / f"{i}.png")
    return root


def folder_config(root: Path, *sets: str):
    return load_config("mae", ["data.name=imagefolder", f"data.root={root}", *sets])


def test_an_image_folder_of_32px_images_trains_at_32px(tmp_path):
    cfg = folder_config(image_folder(tmp_path / "imgs", {"cat": (32, 32), "dog": (32, 32)}))
    assert cfg.data.img_size == 32
    grid = token_grid(cfg)
    assert (grid.grid, grid.tokens) == (8, 64)
    assert start_facts(cfg, 1)["tokens"] == 64


def test_the_train_split_is_read_when_there_is_one(tmp_path):
    root = tmp_path / "imgs"
    image_folder(root / "train", {"a": (48, 48)})
    image_folder(root / "test", {"a": (64, 64)})
    assert folder_config(root).data.img_size == 48


@pytest.mark.parametrize("sizes, seen", [({"cat": (32, 32), "dog": (64, 64)}, "32x32"), ({"cat": (40, 32)}, "40x32")])
def test_images_of_several_sizes_need_data_img_size(tmp_path, sizes, seen):
    root = image_folder(tmp_path / "imgs", sizes)
    with pytest.raises(ConfigError, match=rf"data\.img_size is not set and the images in .* not all one square size "
                                          rf"\(seen {seen}.*set data\.img_size"):
        folder_config(root)
    assert folder_config(root, "data.img_size=32").data.img_size == 32  # given: nothing is read


def test_an_inferred_size_must_fit_the_patches(tmp_path):
    root = image_folder(tmp_path / "imgs", {"cat": (30, 30)})
    with pytest.raises(ConfigError, match=r"data\.img_size=30 is not a multiple of model\.patch_size=4"):
        folder_config(root)
    assert folder_config(root, "model.patch_size=5").data.img_size == 30


def test_a_missing_folder_or_root_fails_at_load(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        folder_config(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data\.name=imagefolder needs data\.root"):
        load_config("mae", ["data.name=imagefolder"])


@pytest.mark.parametrize("name, size", [("cifar10", 32), ("stl10", 96), ("tiny-imagenet", 64), ("digits", 32)])
def test_a_named_dataset_states_its_own_size(name, size):
    assert load_config("mae", [f"data.name={name}"]).data.img_size == size
