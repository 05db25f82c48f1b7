"""data.name webdataset: tar shards indexed with tarfile and read sample by sample."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimreg.config import load_config
from mimreg.data import load_dataset
from support import assert_resume_is_exact
from mimreg.errors import DataError


def pattern(count: int, offset: int = 0) -> np.ndarray:
    n, h, w, c = np.meshgrid(np.arange(count), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return ((n + offset) * 17 + h * 5 + w * 2 + c * 70).astype(np.uint8)


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, pixels: np.ndarray, per_shard: int, labelled: bool = True) -> None:
    """WebDataset's layout: <key>.png and <key>.cls members, `per_shard` samples a shard."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(pixels), per_shard):
        with tarfile.open(folder / f"shard-{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(pixels))):
                encoded = io.BytesIO()
                Image.fromarray(pixels[i]).save(encoded, format="png")
                add(tar, f"sample{i:06d}.png", encoded.getvalue())
                if labelled:
                    add(tar, f"sample{i:06d}.cls", str(i % 3).encode())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """train/: 64 images of 32x32 in two shards; test/: 6 images in one."""
    root = tmp_path_factory.mktemp("wds")
    write_shards(root / "train", pattern(64), per_shard=32)
    write_shards(root / "test", pattern(6, offset=100), per_shard=8)
    return root


def test_samples_across_shards_read_exactly(shards):
    train = load_dataset("webdataset", "pretrain", shards)
    test = load_dataset("webdataset", "test", shards)
    assert (len(train), len(test)) == (64, 6) and train.classes == ["0", "1", "2"]
    assert list(test.labels) == [0, 1, 2, 0, 1, 2]
    image, label = train[40]  # in the second shard
    assert label == 40 % 3 and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), pattern(64)[40])
    np.testing.assert_array_equal(np.asarray(test[5][0]), pattern(6, offset=100)[5])
    assert load_config("digits/mae", ["data.name=webdataset", f"data.root={shards}"]).img_size == 32  # read from the images


def test_each_shard_is_indexed_once_until_it_changes(tmp_path, monkeypatch):
    """Config load (the image size), training and the test split's class count all open the train
    shards: their tar headers are read once; a rewritten shard is read anew."""
    write_shards(tmp_path / "train", pattern(8), per_shard=4)
    write_shards(tmp_path / "test", pattern(2, offset=50), per_shard=4)
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda path, *a, **k: opened.append(Path(path).name) or real_open(path, *a, **k))
    load_dataset("webdataset", "train", tmp_path)
    assert load_dataset("webdataset", "test", tmp_path).num_classes == 3
    assert sorted(opened) == ["shard-00000.tar", "shard-00000.tar", "shard-00001.tar"]  # train 0, 1 and test 0, once each
    monkeypatch.setattr(tarfile, "open", real_open)
    write_shards(tmp_path / "train", pattern(8, offset=7)[:6], per_shard=4)  # fewer samples in shard 1
    assert len(load_dataset("webdataset", "train", tmp_path)) == 6


def test_unlabelled_shards_and_errors(tmp_path):
    write_shards(tmp_path / "plain", pattern(3), per_shard=2, labelled=False)
    plain = load_dataset("webdataset", "train", tmp_path / "plain")
    assert len(plain) == 3 and plain.classes == [] and set(plain.labels) == {-1}
    with pytest.raises(DataError, match=r"has no test split: expected .tar shards in .*train and .*test"):
        load_dataset("webdataset", "test", tmp_path / "plain")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"No .tar shards in .*empty; write the shards there"):
        load_dataset("webdataset", "train", tmp_path / "empty")
    with tarfile.open(tmp_path / "empty" / "a.tar", "w") as tar:
        add(tar, "x.png", b"not a png")
        add(tar, "x.cls", b"cat")
    with pytest.raises(DataError, match=r"x.cls holds 'cat', not an integer class"):
        load_dataset("webdataset", "train", tmp_path / "empty")


@pytest.mark.parametrize("pipeline", ["loader", "device"])
def test_pretraining_on_shards_resumes_exactly(shards, tmp_path, tiny_config, pipeline):
    sets = ("data.name=webdataset", f"data.root={shards}", f"data.pipeline={pipeline}", "train.epochs=2",
            "train.ckpt_every_steps=1")
    assert_resume_is_exact(tiny_config, sets, tmp_path)


def test_each_process_reads_its_own_shards(shards):
    from mimreg.data.shards import shard_of_samples
    from mimreg.engine.data import EpochBatches, ShardBatches
    from mimreg.run_length import step_counts

    shard_of = shard_of_samples(load_dataset("webdataset", "train", shards))  # samples 0-31: shard 0, 32-63: shard 1
    ranks = [ShardBatches(shard_of, 8, 2, rank, seed=3) for rank in (0, 1)]
    assert [r.steps for r in ranks] == [4, 4]  # each process: its 32 images in batches of 8
    uneven = ShardBatches(shard_of[16:], 8, 2, 0, seed=3)  # 16 and 32 images: 2 steps for both processes
    assert uneven.steps == 2 and step_counts(uneven.size, 8, 2, 1, 1, 0)[0] == 2  # the run counts the same steps
    for rank, batches in enumerate(ranks):
        for epoch in (0, 1):
            read = np.concatenate(batches.for_epoch(epoch))
            assert set(shard_of[read]) == {rank} and len(set(read)) == 32
        assert batches.for_epoch(1, start=2) == batches.for_epoch(1)[2:]  # a resumed epoch goes on where it stopped
    assert ranks[0].for_epoch(0) != ranks[0].for_epoch(1)  # a new order each epoch
    one = ShardBatches(shard_of, 8, 1, 0, seed=3)
    assert one.for_epoch(1) == EpochBatches(64, 8, 1, 0, seed=3).for_epoch(1)  # one process: as any dataset
    with pytest.raises(Exception, match=r"2 shard\(s\) for 3 processes, and each process reads its own shards"):
        ShardBatches(shard_of, 8, 3, 0, seed=3)


def test_auto_pipeline_decodes_small_shards_on_the_device(shards, tiny_config):
    from mimreg.engine.data import build_pretrain_data

    data = build_pretrain_data(tiny_config("mae", "data.name=webdataset", f"data.root={shards}"), world=1, rank=0)
    assert data.pipeline == "device"


@pytest.mark.slow
def test_two_processes_read_their_own_shards_and_resume_exactly(tmp_path, torchrun):
    """Shards of 32, 16 and 16 images: process 0 reads shards 0 and 2 (48), process 1 shard 1 (16);
    both make the 2 steps of batch 8 that the smaller share fills."""
    root = tmp_path / "shards"
    write_shards(root, pattern(32), per_shard=32)
    (root / "shard-00000.tar").rename(root / "a.tar")
    write_shards(root, pattern(32, offset=40), per_shard=16)
    sets = ["data.name=webdataset", f"data.root={root}", "optim.batch_size=8", "train.epochs=2", "model.arch=vit_micro",
            "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2", "train.progress=false",
            "train.log_every=1", "train.ckpt_every_steps=1", "train.rep_monitor_every=0", "train.knn_every=0"]

    def pretrain(run: str, *extra: str) -> list[dict]:
        argv = ["-m", "mimreg.cli", "pretrain", "mae", "--out", str(tmp_path / run), *extra]
        torchrun([*argv, *(x for s in sets for x in ("--set", s))], tmp_path)
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    whole = pretrain("whole")
    assert whole[0]["world"] == 2 and whole[0]["steps_per_epoch"] == 2
    pretrain("resumed", "--set", "train.halt_after_steps=3")
    resumed = pretrain("resumed", "--resume")
    losses = [[(r["step"], r["loss"]) for r in run if r.get("kind") == "train"] for run in (whole, resumed)]
    assert losses[0] == losses[1] and [s for s, _ in losses[0]] == [1, 2, 3, 4]


def test_an_undecodable_member_is_named_or_skipped(tmp_path):
    from mimreg.data.base import BadSample
    from mimreg.data.shards import ShardDataset

    shard = tmp_path / "shard-0.tar"
    with tarfile.open(shard, "w") as tar:
        for key, data in (("good", png_bytes()), ("bad", b"not an image")):
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert ShardDataset([shard])[0][0].size == (4, 4)
    with pytest.raises(DataError, match=r"Image .*shard-0.tar:bad could not be decoded .* data.skip_bad_images: true"):
        ShardDataset([shard])[1]
    assert ShardDataset([shard], skip_bad_images=True)[1] == BadSample(f"{shard}:bad")


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(out, "PNG")
    return out.getvalue()
