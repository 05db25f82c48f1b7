"""imagenet / imagenet100 loaders on a synthetic ImageNet-shaped tree, and the draft-mode crop path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimreg.data import eval_crop_fraction, eval_transform, load_dataset
from mimreg.data.base import BadSample
from mimreg.data.draft import DraftCropDataset, draft_reduction, resized_crop
from mimreg.data.imagenet import imagenet100_wnids
from mimreg.data.batch_augment import BatchAugment
from mimreg.data.files import decode_rgb, sample_paths
from mimreg.data.normalise import Normalise
from mimreg.data.transforms import ViewSpec, mae_view, simclr_view, view_transform
from mimreg.errors import DataError

SIZES = [(500, 375), (375, 500), (300, 300)]  # (width, height), as ImageNet's photos


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour field with some texture, as a photo's JPEG statistics (not noise)."""
    y, x = np.mgrid[0:height, 0:width] / 40.0
    rng = np.random.default_rng(seed)
    channels = [127 + 60 * np.sin(x * rng.uniform(0.5, 2) + y * rng.uniform(0.5, 2) + c) +
                40 * np.cos(x * 0.3 * (c + 1) - y * 0.7) for c in range(3)]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


def write_photo(path: Path, index: int, sizes=SIZES) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(*sizes[index % len(sizes)], seed=index).save(path, "JPEG", quality=90)


def make_imagenet(root: Path, wnids: list[str], per_class: int = 2, flat_val: str | None = "val_labels.txt",
                  sizes=SIZES) -> dict:
    """ROOT/train/<wnid>/, and ROOT/val flat with the label file `flat_val` (or in class folders when None).
    Returns {val file name: wnid}."""
    labels = {}
    for c, wnid in enumerate(wnids):
        for j in range(per_class):
            write_photo(root / "train" / wnid / f"{wnid}_{j}.JPEG", c * per_class + j, sizes)
            name = f"ILSVRC2012_val_{c * per_class + j + 1:08d}.JPEG"
            labels[name] = wnid
            write_photo(root / "val" / (name if flat_val else f"{wnid}/{name}"), c + j, sizes)
    if flat_val == "val_labels.txt":
        (root / "val" / flat_val).write_text("".join(f"{n} {w}\n" for n, w in labels.items()))
    elif flat_val == "LOC_val_solution.csv":
        rows = "".join(f"{n[:-5]},{w} 1 2 30 40 {w} 5 6 70 80\n" for n, w in labels.items())
        (root / flat_val).write_text("ImageId,PredictionString\n" + rows)
    return labels


WNIDS = ["n01440764", "n01443537", "n02869837"]


@pytest.mark.parametrize("flat_val", ["val_labels.txt", "LOC_val_solution.csv", None])
def test_imagenet_loads_every_split(tmp_path, flat_val):
    labels = make_imagenet(tmp_path, WNIDS[::-1], flat_val=flat_val)
    train = load_dataset("imagenet", "train", tmp_path)
    assert train.classes == sorted(WNIDS)  # sorted wnids, as ImageFolder
    assert len(train) == 6 and len(load_dataset("imagenet", "pretrain", tmp_path)) == 6
    image, label = train[0]
    assert image.size == SIZES[(2 * 2) % 3] and label == 0  # n01440764_0.JPEG was written as photo 4
    test = load_dataset("imagenet", "test", tmp_path)
    names = [Path(p.decode()).name for p in test.paths]
    assert sorted(names) == sorted(labels)
    assert [test.classes[i] for i in test.labels] == [labels[n] for n in names]


def test_kaggle_tree_is_found(tmp_path):
    make_imagenet(tmp_path / "ILSVRC" / "Data" / "CLS-LOC", WNIDS, flat_val=None)
    assert len(load_dataset("imagenet", "test", tmp_path)) == 6


def test_classes_are_named_by_the_synset_mapping_of_the_kaggle_release(tmp_path):
    """Legends show "tench", not n01440764: LOC_synset_mapping.txt (beside the ILSVRC folder) names
    the classes of both splits, in the same order; without it, the wnids."""
    base = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    make_imagenet(base, WNIDS, per_class=1, flat_val=None, sizes=[(8, 6)])
    assert load_dataset("imagenet", "train", tmp_path).classes == WNIDS
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn02869837 bonnet, poke bonnet\n")
    for split in ("train", "test"):
        assert load_dataset("imagenet", split, tmp_path).classes == ["tench", "goldfish", "bonnet"]


def test_imagenet100_filters_a_full_tree(tmp_path):
    chosen = imagenet100_wnids()
    assert len(chosen) == 100 and chosen[:2] == ["n01558993", "n01692333"]
    extra = ["n01440764", "n01443537"]  # ImageNet classes outside ImageNet-100
    labels = make_imagenet(tmp_path, chosen + extra, per_class=1, sizes=[(8, 6)])
    for split, count in (("pretrain", 100), ("test", 100)):
        data = load_dataset("imagenet100", split, tmp_path)
        assert data.classes == chosen and len(data) == count
    test = load_dataset("imagenet100", "test", tmp_path)
    assert all(labels[Path(p.decode()).name] == test.classes[y] for p, y in zip(test.paths, test.labels))


def test_imagenet100_refuses_a_root_missing_classes(tmp_path):
    make_imagenet(tmp_path, imagenet100_wnids()[2:], per_class=1, sizes=[(8, 6)])
    with pytest.raises(DataError, match=r"lacks 2 of the 100 ImageNet-100 classes \(e.g. n01558993, n01692333\)"):
        load_dataset("imagenet100", "train", tmp_path)


@pytest.mark.parametrize("mess, message", [
    ("no_train", r"train does not exist. Set data.root to a folder laid out as ROOT/train/<wnid>/\*.JPEG"),
    ("no_label_file", r"no label file. Add .*val_labels.txt with one 'ILSVRC2012_val_00000001.JPEG n01751748' line"),
    ("devkit_only", r"ILSVRC2012_validation_ground_truth.txt numbers classes in the devkit's meta.mat order"),
    ("unlabelled", r"1 val images of .* have no label \(e.g. extra.JPEG\)"),
    ("unknown_wnid", r"1 val images of .* are labelled with classes that are not train folders \(e.g. n09999999\)"),
])
def test_bad_layouts_give_one_line_errors(tmp_path, mess, message):
    make_imagenet(tmp_path, WNIDS, per_class=1)
    val = tmp_path / "val"
    if mess == "no_train":
        (tmp_path / "train").rename(tmp_path / "training")
    elif mess in ("no_label_file", "devkit_only"):
        (val / "val_labels.txt").unlink()
        if mess == "devkit_only":
            (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("65\n970\n")
    elif mess == "unlabelled":
        write_photo(val / "extra.JPEG", 0)
    else:
        with open(val / "val_labels.txt", "a") as f:
            f.write("ILSVRC2012_val_00000009.JPEG n09999999\n")
        write_photo(val / "ILSVRC2012_val_00000009.JPEG", 0)
    with pytest.raises(DataError, match=message) as caught:
        load_dataset("imagenet", "test", tmp_path)
    assert "\n" not in str(caught.value)


def test_eval_transform_resizes_256_and_crops_224_for_imagenet():
    assert eval_crop_fraction("imagenet100") == 0.875 and eval_crop_fraction("cifar10") == 1.0
    resize = eval_transform(224, crop_fraction=eval_crop_fraction("imagenet")).transforms[0]
    assert resize.size == 256
    out = eval_transform(224, crop_fraction=0.875)(photo(500, 375, 0))
    assert out.shape == (3, 224, 224)


def test_draft_reduction_keeps_the_crop_at_least_the_output():
    assert draft_reduction((0, 0, 500, 460), 224) == 2  # 460 / 2 = 230 >= 224; / 4 would be 115
    assert draft_reduction((0, 0, 375, 300), 64) == 4
    assert draft_reduction((0, 0, 600, 600), 64) == 8
    assert draft_reduction((0, 0, 300, 200), 224) == 1


def test_draft_crops_are_close_to_full_decode_crops(tmp_path):
    """Same box, decoded at 1/2 to 1/4 scale vs in full: mean |difference| under 1 grey level (of
    255) and no pixel off by more than 8 (measured: mean 0.29-0.44, max 2-3 on this photo)."""
    path = tmp_path / "a.JPEG"
    photo(500, 375, 3).save(path, "JPEG", quality=90)
    full = Image.open(path).convert("RGB")
    for box, out in (((10, 20, 300, 400), 128), ((50, 60, 280, 280), 64), ((0, 0, 375, 500), 56)):
        with Image.open(path) as image:
            reduction = draft_reduction(box, out)
            mode, region = image.draft("RGB", (500 // reduction, 375 // reduction))
            drafted = resized_crop(image.convert("RGB"), box, region[2] / 500, out).permute(1, 2, 0)
        assert reduction > 1
        top, left, height, width = box  # RandomResizedCrop's crop and resize, all in Pillow
        plain = np.asarray(full.crop((left, top, left + width, top + height)).resize((out, out), Image.BICUBIC),
                           dtype=np.float64)
        difference = np.abs(np.asarray(drafted, dtype=np.float64) - plain)
        assert difference.mean() < 1.0 and difference.max() <= 8, (box, reduction, difference.mean())


def device_pipeline_views(raw, specs, seed: int, epoch: int, mean, std) -> list[list[torch.Tensor]]:
    """Each sample's views as the device pipeline builds them from the fully decoded images."""
    images = [torch.from_numpy(np.array(decode_rgb(path))).permute(2, 0, 1) for path in sample_paths(raw)]
    views = BatchAugment(specs, mean, std, seed).views(images, np.arange(len(images)), epoch)
    return [[view[i] for view in views] for i in range(len(images))]


def draft_views(dataset: DraftCropDataset, normalise: Normalise) -> list[list[torch.Tensor]]:
    samples = dataset.__getitems__(list(range(len(dataset.paths))))  # as a loader worker asks
    return [[normalise(v[None])[0] for v in (views if isinstance(views, list) else [views])]
            for views, _ in samples]


@pytest.mark.parametrize("specs, bound", [
    # measured worst view: 0.53 (decoded at 1/4 or 1/8 here, in full there)
    ([mae_view(32, (0.2, 1.0))], 1.0),
    # 0.31: never reduced; ours rounded to 8 bits (0.25 of it), theirs in float
    ([ViewSpec(400, (0.2, 1.0))], 0.5),
    # 2.2 (mean 1.3): the colour ops rounded to 8 bits after each here, in float there
    ([simclr_view(32, blur=True)] * 2, 3.0),
])
def test_draft_dataset_gives_the_device_pipeline_views(tmp_path, specs, bound):
    """The same (seed, epoch, index, view) gives the same boxes, flips and colour draws in both
    pipelines, so each view lands within the two pipelines' rounding (mean grey levels below `bound`);
    another draw is tens of grey levels off."""
    make_imagenet(tmp_path, WNIDS, per_class=3)
    raw = load_dataset("imagenet", "train", tmp_path)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    draft = DraftCropDataset(raw, specs, seed=7, as_list=True, skip_bad_images=False)
    for epoch in (0, 1):
        draft.set_epoch(epoch)
        ours, theirs = draft_views(draft, Normalise(mean, std)), device_pipeline_views(raw, specs, 7, epoch, mean, std)
        # in grey levels: normalised by std 0.5 of [0, 1], so 1/255 is 2/255 here
        differences = [((a - b).abs().mean() * 255 / 2).item() for x, y in zip(ours, theirs) for a, b in zip(x, y)]
        assert max(differences) < bound, (epoch, differences)
    other = device_pipeline_views(raw, specs, 8, 1, mean, std)
    assert np.mean([((a - b).abs().mean() * 255 / 2).item() for x, y in zip(ours, other) for a, b in zip(x, y)]) > 10


def test_draft_dataset_gives_one_sample_as_in_its_batch(tmp_path):
    make_imagenet(tmp_path, WNIDS[:2], per_class=2)
    raw = load_dataset("imagenet", "train", tmp_path)
    draft = DraftCropDataset(raw, [simclr_view(32)], seed=1, as_list=False, skip_bad_images=False)
    batch = draft.__getitems__([3, 0, 2])
    assert [torch.equal(draft[i][0], sample[0]) for i, sample in zip([3, 0, 2], batch)] == [True] * 3
    assert batch[0][0].dtype == torch.uint8 and [s[1] for s in batch] == [int(raw.labels[i]) for i in (3, 0, 2)]


def test_draft_dataset_views_and_bad_files(tmp_path):
    make_imagenet(tmp_path, WNIDS[:1], per_class=2)
    raw = load_dataset("imagenet", "train", tmp_path)
    specs = [mae_view(48), mae_view(48), mae_view(16, (0.05, 0.3))]
    views, label = DraftCropDataset(raw, specs, 0, True, False)[0]
    assert [v.shape[-1] for v in views] == [48, 48, 16] and label == 0
    bad = Path(raw.paths[1].decode())
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated JPEG
    skipping = DraftCropDataset(raw, specs[:1], 0, False, skip_bad_images=True)
    assert skipping[1] == BadSample(str(bad))
    batch = skipping.__getitems__([0, 1])  # the good sample of a batch keeps its own draws
    assert batch[1] == BadSample(str(bad)) and torch.equal(batch[0][0], skipping[0][0])
    bad_header = Path(raw.paths[0].decode())
    bad_header.write_bytes(b"not an image")
    assert skipping.__getitems__([0, 1]) == [BadSample(str(bad_header)), BadSample(str(bad))]
    with pytest.raises(DataError, match=f"Image file {bad} could not be decoded .* set data.skip_bad_images: true"):
        DraftCropDataset(raw, specs[:1], 0, False, skip_bad_images=False)[1]


def test_draft_dataset_opens_other_formats_once_as_rgb(tmp_path, monkeypatch):
    """A PNG (RGB, palette with transparency, 16-bit grey) is opened by Pillow once and decoded as
    decode_rgb does: the views are the device pipeline's (from decode_rgb) within its rounding."""
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    rgb = photo(60, 50, 1)
    rgb.save(folder / "rgb.png")
    rgb.convert("P").save(folder / "palette.png", transparency=0)
    Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).save(folder / "grey16.png")
    raw = load_dataset("imagefolder", "train", tmp_path)
    opened = []
    monkeypatch.setattr(Image, "open", lambda fp, *a, _open=Image.open, **k: opened.append(fp) or _open(fp, *a, **k))
    specs = [mae_view(32, (0.5, 1.0))]
    draft = DraftCropDataset(raw, specs, seed=3, as_list=True, skip_bad_images=False)
    ours = draft_views(draft, Normalise((0.5,) * 3, (0.5,) * 3))
    assert len(opened) == 3
    theirs = device_pipeline_views(raw, specs, 3, 0, (0.5,) * 3, (0.5,) * 3)
    differences = [((a - b).abs().mean() * 255 / 2).item() for x, y in zip(ours, theirs) for a, b in zip(x, y)]
    assert max(differences) < 0.5, differences
