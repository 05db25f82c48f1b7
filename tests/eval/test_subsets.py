"""Training images chosen by a subset file (MSN's low-shot lists, SimCLR's 1%), by file name."""

import json
import re
from collections import Counter
from importlib import resources

import pytest
from PIL import Image

from mimreg.data import load_dataset
from mimreg.data.files import sample_paths
from mimreg.errors import ConfigError, DataError
from mimreg.eval.evaluate import evaluate
from mimreg.eval.subsets import NAMED, select_subset, shipped, subset_lines


@pytest.fixture
def folder(tmp_path):
    """ROOT/{train,test}/<class>/<class>_<j>.JPEG, 3 classes, 6 train and 2 test images each."""
    root = tmp_path / "images"
    for split, count in (("train", 6), ("test", 2)):
        for c, name in enumerate(("n01", "n02", "n03")):
            for j in range(count):
                path = root / split / name / f"{name}_{j}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (24, 20), (80 * c, 40 * j, 100)).save(path)
    return root


def test_a_subset_file_picks_images_by_file_name_or_relative_path(folder, tmp_path):
    listing = tmp_path / "two.txt"
    listing.write_text("# two per class\nn01_0.JPEG\nn01_3.JPEG\nn02/n02_1.JPEG\n\nn02_5.JPEG\ntrain/n03/n03_2.JPEG\n"
                       "n03_4.JPEG\n")
    raw = load_dataset("imagefolder", "train", folder)
    chosen = select_subset(raw, str(listing), str(folder))
    names = sorted(p.split("/")[-1] for p in sample_paths(chosen))
    assert names == ["n01_0.JPEG", "n01_3.JPEG", "n02_1.JPEG", "n02_5.JPEG", "n03_2.JPEG", "n03_4.JPEG"]
    assert list(chosen.labels) == [0, 0, 1, 1, 2, 2]


def test_a_subset_naming_no_image_of_the_dataset_is_an_error(folder, tmp_path, capsys):
    listing = tmp_path / "other.txt"
    listing.write_text("n09_1.JPEG\n")
    raw = load_dataset("imagefolder", "train", folder)
    with pytest.raises(DataError, match="none of the 1 images of subset"):
        select_subset(raw, str(listing), str(folder))
    listing.write_text("n09_1.JPEG\nn01_1.JPEG\n")
    assert len(select_subset(raw, str(listing), str(folder))) == 1
    assert "1 of the 2 images of subset" in capsys.readouterr().err


def test_named_subsets_are_shipped_or_say_where_to_get_them():
    for name in shipped():
        lines = subset_lines(name)
        assert lines and all(line.endswith(".JPEG") for line in lines)
    assert len(subset_lines("1img-split1")) == 1000  # MSN: one image of each ImageNet-1k class
    missing = [name for name in NAMED if name not in shipped()]
    if missing:
        with pytest.raises(ConfigError, match="download it from https://github.com/"):
            subset_lines(missing[0])
    with pytest.raises(ConfigError, match="neither a file nor a named subset"):
        subset_lines("2percent")


# The official lists shipped in subset_lists/: name -> images per class (1percent: 12 or 13, see below).
OFFICIAL = {**{f"{k}img-split{s}": k for k in (1, 2, 5) for s in (1, 2, 3)}, "1percent": None}


def _per_class(lines):
    """Images per ImageNet class (wnid = file name up to the underscore)."""
    return Counter(line.split("_")[0] for line in lines)


def test_the_official_lists_are_all_shipped_with_their_source_in_the_header():
    assert shipped() == sorted(OFFICIAL)
    for name in OFFICIAL:
        text = (resources.files("mimreg.eval") / "subset_lists" / f"{name}.txt").read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        repo_path = NAMED[name].split("/blob/")[1].split("/", 1)[1]  # e.g. imagenet_subsets3/3imgs_class.txt
        assert len(header) >= 3 and f", {repo_path} (commit " in header[1] and "licence" in header[2], name
        assert text.endswith(".JPEG\n") and text.splitlines()[len(header)] == subset_lines(name)[0], name


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_an_official_list_names_distinct_imagenet_train_images_of_all_1000_classes(name):
    lines = subset_lines(name)
    assert all(re.fullmatch(r"n\d{8}_\d+\.JPEG", line) for line in lines)
    assert len(set(lines)) == len(lines)
    per_class = _per_class(lines)
    assert len(per_class) == 1000
    if OFFICIAL[name] is None:  # SimCLR 1%: 12811 of the 1281167 train images, 13 for 811 classes and 12 for 189
        assert len(lines) == 12811 and Counter(per_class.values()) == {13: 811, 12: 189}
    else:
        assert len(lines) == 1000 * OFFICIAL[name] and set(per_class.values()) == {OFFICIAL[name]}


@pytest.mark.parametrize("split", (1, 2, 3))
def test_msn_lists_of_a_split_nest_1_in_2_in_5_images_per_class(split):
    five = subset_lines(f"5img-split{split}")
    runs = [five[i:i + 5] for i in range(0, 5000, 5)]
    assert all(len(_per_class(run)) == 1 for run in runs)  # each class's 5 images are consecutive
    assert subset_lines(f"2img-split{split}") == [line for run in runs for line in run[:2]]
    assert subset_lines(f"1img-split{split}") == [run[0] for run in runs]


def test_evaluate_trains_on_the_subset_and_stores_its_features(tiny_run, folder, tmp_path):
    listing = tmp_path / "two.txt"
    listing.write_text("\n".join(f"n0{c}_{j}.JPEG" for c in (1, 2, 3) for j in (0, 1)))
    store = tmp_path / "store"
    out = evaluate(tiny_run, ["linear"], data="imagefolder", data_root=str(folder), linear_protocol="mae",
                   linear_epochs=3, device="cpu", subset=str(listing), feature_store=str(store), echo=lambda *a: None)
    assert out["train_images"] == 6 and out["test_images"] == 6
    meta = json.loads((store / "train.json").read_text())
    assert meta["rows"] == 6 and (store / "train_cls.f32").stat().st_size == 6 * meta["dims"]["cls"] * 4
    assert out["files"][0].endswith("subsettwo.json")
    assert json.loads(open(out["files"][0]).read())["options"]["subset"] == "two"


def test_lowshot_with_a_subset_fits_once_on_the_listed_images(tiny_run, folder, tmp_path):
    listing = tmp_path / "one.txt"
    listing.write_text("n01_2.JPEG\nn02_2.JPEG\nn03_2.JPEG\n")
    out = evaluate(tiny_run, ["lowshot"], data="imagefolder", data_root=str(folder), device="cpu",
                   subset=str(listing), echo=lambda *a: None)
    result = out["results"]["lowshot"]["cls"]
    assert list(result) == ["subset"] and result["subset"]["n_labelled"] == 3 and len(result["subset"]["runs"]) == 1


def test_a_split_above_the_threshold_goes_to_run_features_and_a_small_one_stays_in_memory(tiny_run, folder,
                                                                                             monkeypatch):
    import mimreg.eval.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "STORE_ABOVE", 10)  # train: 18 images, test: 6
    out = evaluate(tiny_run, ["linear"], data="imagefolder", data_root=str(folder), linear_protocol="mae",
                   linear_epochs=3, device="cpu", echo=lambda *a: None)
    assert json.loads((tiny_run / "features" / "train.json").read_text())["rows"] == 18
    assert not (tiny_run / "features" / "test.json").exists()
    assert 0 <= out["results"]["linear"]["cls"]["top1"] <= 100 and out["train_images"] == 18
