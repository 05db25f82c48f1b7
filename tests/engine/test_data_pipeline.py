"""The two pretraining pipelines as the loop uses them: auto selection, augmentation statistics of
the device pipeline against the PIL one, bad images, exact resume, 2 processes equal to 1, and
loader workers kept across epochs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mimreg.config import load_config
from mimreg.data import TransformedDataset, dataset_stats
from mimreg.data.draft import DraftCropDataset
from mimreg.engine.data import DevicePretrainData, LoaderData, build_pretrain_data
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("single_thread")
WORKER = Path(__file__).with_name("data_pipeline_worker.py")
# conftest's tiny runs, with a small projector instead of its MAE decoder keys
TINY_JOINT = ["data.name=synthetic", "data.img_size=32", "model.arch=vit_micro", "method.proj_hidden_dim=32",
              "method.proj_output_dim=16", "optim.batch_size=32", "train.epochs=1", "train.device=cpu",
              "train.progress=false", "train.log_every=1", "train.monitor_every=1"]


def joint_config(recipe: str, *sets: str):
    return load_config(f"digits/{recipe}", [*TINY_JOINT, *sets])


def test_auto_picks_the_device_pipeline_when_the_images_fit(tiny_config, tmp_path, write_folder):
    assert tiny_config("mae").data.pipeline == "auto"
    data = build_pretrain_data(tiny_config("mae"), world=1, rank=0)
    assert isinstance(data, DevicePretrainData) and data.pixels.shape == (512, 3, 32, 32)
    small_budget = tiny_config("mae", data__device_memory_gb=0.001)  # 1 MiB < 1.5 MiB of images
    assert isinstance(build_pretrain_data(small_budget, world=1, rank=0), LoaderData)
    assert isinstance(build_pretrain_data(tiny_config("mae", data__pipeline="loader"), 1, 0), LoaderData)

    mixed = write_folder(tmp_path / "mixed", sizes={3: (24, 16)})
    folder = ("data.name=imagefolder", f"data.root={mixed}", "optim.batch_size=4", "data.img_size=16")
    assert isinstance(build_pretrain_data(tiny_config("mae", *folder), 1, 0), LoaderData)
    with pytest.raises(DataError, match="one size"):
        build_pretrain_data(tiny_config("mae", *folder, "data.pipeline=device"), 1, 0)


@pytest.fixture(name="write_folder")
def write_folder_fixture():
    from PIL import Image

    def write(root: Path, count: int = 8, sizes=None) -> Path:
        for k in range(count):
            path = root / f"class{k % 2}" / f"img{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (sizes or {}).get(k, (20, 16)), (30 * k, 200 - 20 * k, 90)).save(path)
        return root

    return write


def epoch_views(data, epochs=2) -> torch.Tensor:
    views = []
    for epoch in range(epochs):
        for batch in data.loader(epoch, 0, num_workers=0, pin_memory=False):
            views += batch.images if isinstance(batch.images, list) else [batch.images]
    return torch.cat(views)


@pytest.mark.parametrize("recipe, mean_tol", [("mae", 0.01), ("simclr", 0.06)])
def test_device_views_have_the_statistics_of_the_pil_views(recipe, mean_tol):
    """Over 2 epochs of the 512 synthetic images: per-channel mean and std of the normalised views,
    and the mean within-image std (the colour jitter's spread). Pillow truncates to 8 bits after each
    colour op, which lowers its means by ~0.5 grey level per op: 0.03 here; the device path does not."""
    stats = {}
    for pipeline in ("device", "loader"):
        cfg = load_config(f"digits/{recipe}", ["data.name=synthetic", f"data.pipeline={pipeline}",
                                               "optim.batch_size=128"])
        x = epoch_views(build_pretrain_data(cfg, 1, 0))
        stats[pipeline] = (x.mean((0, 2, 3)), x.std((0, 2, 3)), x.flatten(1).std(1).mean())
    (m_d, s_d, w_d), (m_l, s_l, w_l) = stats["device"], stats["loader"]
    assert (m_d - m_l).abs().max() < mean_tol, (m_d, m_l)
    assert (s_d - s_l).abs().max() < 0.03, (s_d, s_l)
    assert abs(w_d - w_l) < 0.03, (w_d, w_l)


def test_bad_images_are_replaced_by_repeats_or_refused(tmp_path, write_folder):
    root = write_folder(tmp_path / "images")
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    sets = ("data.name=imagefolder", f"data.root={root}", "optim.batch_size=9", "data.img_size=16",
            "data.pipeline=device")
    with pytest.raises(DataError, match="broken.jpg could not be decoded.*skip_bad_images"):
        build_pretrain_data(joint_config("simclr", *sets), 1, 0)
    data = build_pretrain_data(joint_config("simclr", *sets, "data.skip_bad_images=true"), 1, 0)
    assert (root / ".mimreg-cache").is_dir()  # next to the data by default
    batch = next(iter(data.loader(0, 0, 0, False)))
    assert batch.bad_files == [str(root / "class0" / "broken.jpg")]
    assert [tuple(v.shape) for v in batch.images] == [(9, 3, 16, 16)] * 2 and len(batch.labels) == 9
    # as the loader pipeline: the good samples in order, then a repeat of the first for the bad one
    assert torch.equal(batch.images[0][8], batch.images[0][0]) and batch.labels[8] == batch.labels[0]
    # the cache made with skip_bad_images holds the bad file; without the option it is refused
    with pytest.raises(DataError, match="broken.jpg could not be decoded"):
        build_pretrain_data(joint_config("simclr", *sets), 1, 0)


def train_records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run / "metrics.jsonl")
            if r.get("kind") == "train"]


def test_resume_with_the_device_pipeline_equals_the_uninterrupted_run(tmp_path):
    sets = ("data.subset=64", "optim.batch_size=16", "train.epochs=2", "train.ckpt_every_steps=3",
            "data.pipeline=device", "regularizers=[]", "monitor=[]")
    whole = pretrain(joint_config("simclr", *sets), tmp_path / "whole")
    halted = pretrain(joint_config("simclr", *sets, "train.halt_after_steps=7"), tmp_path / "resumed")
    assert halted.halted and halted.checkpoint.name == "ckpt_00000007.pt"
    halted.checkpoint.unlink()  # as if killed after step 7: resume from step 6, inside epoch 1
    resumed = pretrain(joint_config("simclr", *sets), tmp_path / "resumed", resume=True)
    assert resumed.steps == whole.steps == 8
    want, got = train_records(tmp_path / "whole"), train_records(tmp_path / "resumed")
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in (k for k in a if not isinstance(a[k], str)):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["halted"] is False


def test_two_processes_see_the_global_batch_of_one(tmp_path, worker_ranks, load_module):
    ranks = worker_ranks(WORKER, tmp_path)
    single = load_module(WORKER).batches(world=1, rank=0, batch_size=32)
    for step, whole in enumerate(single):
        labels = torch.cat([r[step]["labels"] for r in ranks])
        assert torch.equal(labels, whole["labels"])
        assert len(whole["views"]) == 4  # target, anchor and 2 focal views
        for view, want in enumerate(whole["views"]):
            got = torch.cat([r[step]["views"][view] for r in ranks])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_loader_workers_are_kept_across_epochs(tiny_config):
    cfg = tiny_config("mae", data__pipeline="loader", data__subset=64)
    data = build_pretrain_data(cfg, 1, 0)
    in_process = [[b.images for b in build_pretrain_data(cfg, 1, 0).loader(e, 0, 0, False)] for e in (0, 1)]
    pids = []
    for epoch in (0, 1):
        loader = data.loader(epoch, 0, num_workers=1, pin_memory=False)
        got = [b.images for b in loader]
        pids.append([w.pid for w in loader._iterator._workers])
        assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, in_process[epoch]))
    assert pids[0] == pids[1]  # the same worker process served both epochs
    assert not torch.equal(in_process[0][0], in_process[1][0])


def test_decoding_on_the_device_builds_the_device_pipelines_views(tmp_path):
    """data.decode_on_device (here on the CPU): files read by a worker, decoded by torchvision and
    augmented by the batched views, with the parameters of the device pipeline."""
    from PIL import Image

    root = tmp_path / "jpegs"
    for k in range(8):
        (root / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(
            root / f"class{k % 2}" / f"img{k}.jpg", quality=95)
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    sets = ["data.name=imagefolder", f"data.root={root}", "optim.batch_size=9", "data.img_size=16",
            "data.skip_bad_images=true"]
    on_device = build_pretrain_data(joint_config("simclr", *sets, "data.pipeline=loader",
                                                 "data.decode_on_device=true"), 1, 0)
    batch = next(iter(on_device.loader(0, 0, num_workers=1, pin_memory=False)))
    assert batch.bad_files == [str(root / "class0" / "broken.jpg")]
    assert [tuple(v.shape) for v in batch.images] == [(9, 3, 16, 16)] * 2
    # the same views as the device pipeline from the same (torchvision-decoded) pixels
    block = on_device.batches.for_epoch(0)[0]
    good = [i for i in block if "broken" not in on_device.paths[i]]
    pixels = torch.stack([torchvision.io.decode_jpeg(torchvision.io.read_file(on_device.paths[i])) for i in good])
    want = on_device.augment.views(pixels, good, epoch=0)
    for got, expected in zip(batch.images, want):
        torch.testing.assert_close(got[:8], expected, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="decode_on_device works with the loader pipeline"):
        joint_config("simclr", *sets, "data.decode_on_device=true")
    with pytest.raises(ConfigError, match="needs a dataset of image files"):
        build_pretrain_data(joint_config("simclr", "data.pipeline=loader", "data.decode_on_device=true"), 1, 0)


def test_draft_loader_normalises_the_workers_uint8_views_on_the_device(tiny_config, tmp_path, write_folder,
                                                                      monkeypatch):
    """The draft dataset's workers give uint8 views, a whole batch per call (one draw of its parameters);
    the loader hands the engine float views, (x / 255 - mean) / std of exactly those, for both a
    one-view and a two-view method."""
    def one_sample_at_a_time(self, index):
        raise AssertionError("the loader asked for one sample: the batch's parameters were not drawn at once")
    folder = ("data.name=imagefolder", f"data.root={write_folder(tmp_path / 'f')}", "optim.batch_size=4",
              "data.img_size=16", "data.pipeline=loader")
    for make_config, method in ((tiny_config, "mae"), (joint_config, "simclr")):
        data = build_pretrain_data(make_config(method, *folder), 1, 0)
        with monkeypatch.context() as patch:
            patch.setattr(DraftCropDataset, "__getitem__", one_sample_at_a_time)
            batch = next(iter(data.loader(1, 0, 0, False)))
        block = data.batches.for_epoch(1)[0]
        raw_views = [s[0] for s in data.dataset.__getitems__(block)]
        views = batch.images if isinstance(batch.images, list) else [batch.images]
        stacked = [torch.stack([v[k] if isinstance(v, list) else v for v in raw_views]) for k in range(len(views))]
        mean, std = dataset_stats("imagefolder")
        for ours, uint8 in zip(views, stacked):
            assert uint8.dtype == torch.uint8 and ours.dtype == torch.float32
            expected = (uint8.double() / 255 - torch.tensor(mean).view(3, 1, 1).double()) / torch.tensor(std).view(3, 1, 1)
            torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-5)  # of a range ~ 4.5 wide


def test_jpeg_draft_is_in_force_in_the_loader_pipeline_or_refused(tiny_config, tmp_path, write_folder):
    """data.jpeg_draft: unset or true crops image files while decoding (loader pipeline), false decodes
    them whole; true is refused where the device pipeline would decode them instead."""
    folder = ("data.name=imagefolder", f"data.root={write_folder(tmp_path / 'f')}", "optim.batch_size=4",
              "data.img_size=16")
    for draft, expected in ((None, DraftCropDataset), (True, DraftCropDataset), (False, TransformedDataset)):
        sets = [*folder, "data.pipeline=loader"] + ([] if draft is None else [f"data.jpeg_draft={str(draft).lower()}"])
        data = build_pretrain_data(tiny_config("mae", *sets), 1, 0)
        assert type(data.dataset) is expected, draft
    with pytest.raises(ConfigError, match="jpeg_draft=true .* data.pipeline is 'device'"):
        tiny_config("mae", *folder, "data.pipeline=device", "data.jpeg_draft=true")
    with pytest.raises(ConfigError, match="jpeg_draft=true .* data.decode_on_device"):
        tiny_config("mae", *folder, "data.pipeline=loader", "data.decode_on_device=true", "data.jpeg_draft=true")
    with pytest.raises(ConfigError, match="auto' chose 'device'"):  # these images fit the default budget
        build_pretrain_data(tiny_config("mae", *folder, "data.jpeg_draft=true"), 1, 0)
    assert isinstance(build_pretrain_data(tiny_config("mae", *folder), 1, 0), DevicePretrainData)
