"""Checkpoint files: atomic writes, pruning, weights_only loading, RNG states, and errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mimreg.engine.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, rng_state,
                                      save_checkpoint, set_rng_state)
from mimreg.errors import MimregError


def payload(step: int) -> dict:
    return {"model": {"w": torch.full((2, 3), float(step))}, "step": step, "epoch": 0,
            "config": {"recipe": "x", "optim": {"betas": [0.9, 0.95]}}, "rng": rng_state()}


def test_save_is_atomic_and_keeps_the_last_k(tmp_path):
    folder = tmp_path / "checkpoints"
    paths = [save_checkpoint(folder, step, payload(step), keep_last=2) for step in (3, 10, 7, 120)]
    assert paths[0].name == "ckpt_00000003.pt"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ckpt_00000010.pt", "ckpt_00000120.pt"]  # ordered by step, not by write time
    assert not list(folder.glob("*.tmp"))
    assert latest_checkpoint(folder) == folder / "ckpt_00000120.pt"
    assert list_checkpoints(folder) == [folder / "ckpt_00000010.pt", folder / "ckpt_00000120.pt"]


def test_save_keeps_nothing_but_its_own_files(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "ckpt_1.pt").write_text("not our pattern")
    save_checkpoint(folder, 1, payload(1), keep_last=1)
    save_checkpoint(folder, 2, payload(2), keep_last=1)
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt_00000002.pt", "ckpt_1.pt", "notes.txt"]


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    good = save_checkpoint(folder, 1, payload(1), keep_last=2)

    def broken_save(obj, target):
        if hasattr(target, "write"):
            target.write(b"partial")
        else:
            open(target, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(MimregError, match=r"cannot write .*ckpt_00000002\.pt: disk full"):  # one line naming the file
        save_checkpoint(folder, 2, payload(2), keep_last=2)
    assert latest_checkpoint(folder) == good  # the partial file never got a checkpoint name
    assert [p.name for p in folder.iterdir()] == [good.name]  # and was removed
    assert load_checkpoint(good)["step"] == 1


def test_load_with_weights_only_restores_everything(tmp_path):
    path = save_checkpoint(tmp_path, 5, payload(5), keep_last=1)
    state = load_checkpoint(path)
    assert state["step"] == 5
    assert torch.equal(state["model"]["w"], torch.full((2, 3), 5.0))
    assert state["config"]["optim"]["betas"] == [0.9, 0.95]
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    # the same file also loads with torch's strict loader directly
    torch.load(path, weights_only=True)


def test_load_a_run_folder_finds_its_latest_checkpoint(tmp_path):
    for step in (4, 8):
        save_checkpoint(tmp_path / "run" / "checkpoints", step, payload(step), keep_last=3)
    assert load_checkpoint(tmp_path / "run")["step"] == 8
    assert load_checkpoint(tmp_path / "run" / "checkpoints")["step"] == 8


def test_rng_state_round_trip_restores_every_stream(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    path = save_checkpoint(tmp_path, 1, {"rng": rng_state()}, keep_last=1)
    first = (torch.rand(5), np.random.rand(5), np.random.standard_normal(3), [random.random() for _ in range(5)])
    # scramble every stream, then restore from the file written with weights_only
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    again = (torch.rand(5), np.random.rand(5), np.random.standard_normal(3), [random.random() for _ in range(5)])
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[2], again[2])
    assert first[3] == again[3]


def test_rng_state_is_a_snapshot():
    state = rng_state()
    a = torch.rand(3)
    set_rng_state(state)
    b = torch.rand(3)
    assert torch.equal(a, b)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "ckpt_00000001.pt"
    with pytest.raises(MimregError, match="does not exist") as info:
        load_checkpoint(missing)
    assert str(missing) in str(info.value)


def test_corrupt_checkpoint_names_the_path(tmp_path):
    bad = tmp_path / "ckpt_00000001.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(MimregError, match="cannot read checkpoint") as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_checkpoint_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "ckpt_00000001.pt"
    torch.save({"opt": torch.optim.SGD}, path)  # a class: not loadable with weights_only
    with pytest.raises(MimregError, match="cannot read checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_folder_without_checkpoints_names_the_folder(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("x")
    with pytest.raises(MimregError, match="no checkpoint") as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert latest_checkpoint(tmp_path / "missing") is None
