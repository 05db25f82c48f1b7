"""Faults that must keep a run and say what happened: a changed config on resume without
config.yaml, a full disk, non-finite weights, damaged or foreign checkpoints, exports."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from mimreg.cli import main
from mimreg.config import load_config
from mimreg.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, non_finite_entries
from mimreg.engine.loop import LoggedValues, _agree_finite_and_stop, lr_advice, pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.engine.stopping import GracefulStop
from mimreg.engine.task import StepResult
from mimreg.errors import ConfigError, MimregError, NonFiniteLossError

pytestmark = pytest.mark.usefixtures("single_thread")


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- resume
def test_resume_without_config_yaml_is_checked_against_the_checkpoint(tiny_run):
    (tiny_run / "config.yaml").unlink()
    changed = load_config("digits/u-mae", ["optim.weight_decay=0.1"])
    with pytest.raises(ConfigError, match=r"optim\.weight_decay"):
        pretrain(changed, tiny_run, resume=True)
    assert not (tiny_run / "config.yaml").exists()


def test_resume_of_a_folder_without_checkpoint_says_it_starts_from_scratch(tmp_path, tiny_config, capsys):
    pretrain(tiny_config("mae", "data.subset=64"), tmp_path / "new", resume=True)
    assert f"--resume: no checkpoint in {tmp_path / 'new' / 'checkpoints'}; starting from scratch" in capsys.readouterr().out


def test_a_diverged_run_continues_with_a_lower_lr_and_says_so(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    sets = ("data.subset=128", "train.epochs=3", "train.ckpt_every_steps=1", "monitor=[]")
    with pytest.raises(NonFiniteLossError, match=r"a lower optim\.lr \(now 1e\+06\) \(a --resume may change it\)"):
        pretrain(tiny_config("mae", *sets, "optim.lr=1e6"), run)
    # the kept checkpoints are finite but already far off after steps at lr 1e6: go back to step 1
    # (the warm-up's first step has lr 0) and continue from there with a lower lr
    for path in list_checkpoints(run / "checkpoints")[1:]:
        path.unlink()
    kept = load_checkpoint(run)["step"]
    assert kept == 1
    capsys.readouterr()
    result = pretrain(tiny_config("mae", *sets, "optim.lr=1e-3"), run, resume=True)
    assert result.steps == 12 and not result.halted
    assert f"--resume changes optim.lr: 1000000.0 -> 0.001 from step {kept} on" in capsys.readouterr().out
    records = read_metrics(run / "metrics.jsonl")
    assert [r for r in records if r["kind"] == "resume"] == [
        {"kind": "resume", "step": kept, "world": 1, "changed": {"optim.lr": [1e6, 1e-3]}, "time": pytest.approx(0, abs=60)}]
    assert all(r["lr"] <= 1e-3 for r in records if r["kind"] == "train" and r["step"] > kept)


def forged_world(run: Path, world: int) -> None:
    """Make the latest checkpoint of `run` look written by `world` processes (as torchrun would)."""
    path = latest_checkpoint(run / "checkpoints")
    state = load_checkpoint(path)
    state["world"], state["rng_ranks"] = world, state["rng_ranks"] * world
    torch.save(state, path)


def test_a_change_of_world_size_on_resume_is_refused_unless_the_global_batch_is_kept(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    sets = ("data.subset=128", "optim.batch_size=16", "train.epochs=2", "monitor=[]")
    pretrain(tiny_config("mae", *sets, "train.halt_after_steps=3"), run)
    forged_world(run, 2)  # a 2-process run of 2 x 16 images per step, resumed in one process
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\) and this run has 1: the global batch "
                                          r"\(optim\.batch_size x optim\.accum_steps x processes\) would change "
                                          r"from 32 to 16.*or keep it with --set optim\.accum_steps=2"):
        pretrain(tiny_config("mae", *sets), run, resume=True)
    with pytest.raises(ConfigError, match=r"from 32 to 48"):
        pretrain(tiny_config("mae", *sets, "optim.accum_steps=3"), run, resume=True)
    capsys.readouterr()
    result = pretrain(tiny_config("mae", *sets, "optim.accum_steps=2"), run, resume=True)
    assert result.steps == 8  # 128 images / 32 per step x 2 epochs, as the 2-process run would
    resumed = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "resume"]
    assert resumed[0]["world"] == 1 and resumed[0]["changed"] == {"optim.accum_steps": [1, 2]}
    assert "--resume changes optim.accum_steps: 1 -> 2" in capsys.readouterr().out


# ---------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (needs root, as in CI); skipped where mounting is not allowed."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk path is not exercised")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_keeps_the_checkpoints_and_says_so(small_disk, tiny_config):
    run = small_disk / "run"
    sets = ("data.subset=64", "train.epochs=3")
    first = pretrain(tiny_config("mae", *sets, "train.halt_after_steps=2"), run)
    size = first.checkpoint.stat().st_size
    free = shutil.disk_usage(small_disk).free
    # fill the disk up to half a checkpoint (written blocks: a sparse file would take no space)
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=1M",
                    f"count={(free - size // 2) // 2**20}", "status=none"], check=True)
    with pytest.raises(MimregError, match=r"no space left on tmpfs \(mounted at .*\) writing .*ckpt_00000004\.pt"):
        pretrain(tiny_config("mae", *sets), run, resume=True)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt_00000002.pt"]
    assert load_checkpoint(run)["step"] == 2
    assert not list((run / "checkpoints").glob("*.tmp"))


# ---------------------------------------------------------------- non-finite values
def test_weights_that_overflow_never_reach_a_checkpoint(tmp_path, tiny_config):
    run = tmp_path / "run"
    cfg = tiny_config("mae", "data.subset=128", "train.epochs=3", "optim.lr=1e6", "train.ckpt_every_steps=1",
                      "train.keep_last=10", "monitor=[]")
    with pytest.raises(NonFiniteLossError) as info:
        pretrain(cfg, run)
    kept = list_checkpoints(run / "checkpoints")
    for path in kept:
        state = load_checkpoint(path)
        assert non_finite_entries({"model": state["model"], "optimizer": state["optimizer"]["state"]}) == [], path
    message = str(info.value)
    assert "optim.lr" in message and "optim.blr" not in message
    assert str(kept[-1]) in message or "term(s)" in message


def test_an_overflowing_sum_of_finite_terms_names_them():
    big = torch.tensor(3e38)
    result = StepResult(total=big * 2, objective=big * 2, terms={"rec": big, "reg/x": big})
    cfg = load_config("mae")
    with pytest.raises(NonFiniteLossError, match=r"overflowed \(rec=3e\+38, reg/x=3e\+38\)"):
        _agree_finite_and_stop([LoggedValues.of(result)], 7, GracefulStop(), lr_advice(cfg.optim))
    nan = StepResult(total=torch.tensor(float("nan")), objective=torch.tensor(1.0),
                     terms={"rec": torch.tensor(1.0), "reg/a": torch.tensor(float("inf")), "reg/b": torch.tensor(float("nan"))})
    with pytest.raises(NonFiniteLossError, match=r"\['reg/a', 'reg/b'\]"):
        _agree_finite_and_stop([LoggedValues.of(nan)], 7, GracefulStop(), lr_advice(cfg.optim))


# ---------------------------------------------------------------- damaged, foreign and unsafe checkpoints
def test_truncated_checkpoint(tiny_run, capsys):
    path = latest_checkpoint(tiny_run / "checkpoints")
    path.write_bytes(path.read_bytes()[:5000])
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"cannot read checkpoint {path}: the file is truncated or corrupt" in err
    assert "documentation" not in err


def test_checkpoint_with_code_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Bomb:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "ckpt_00000001.pt"
    torch.save({"model": {}, "config": {}, "bomb": Bomb()}, path)
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", path)
    assert code == 2 and not marker.exists()
    assert "holds Python objects other than tensors" in err and "refuses to run" in err


def test_checkpoint_without_config(tmp_path, capsys):
    path = tmp_path / "ckpt_00000001.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", path)
    assert code == 2 and "KeyError" not in err
    assert f"checkpoint {path} holds no run config" in err


def test_checkpoint_of_another_model(tiny_run, tmp_path, capsys):
    state = load_checkpoint(tiny_run)
    state["config"]["model"]["arch"] = "vit_tiny"
    path = tmp_path / "ckpt_00000024.pt"
    torch.save(state, path)
    code, _, err = cli(capsys, "eval", "knn", "--checkpoint", path)
    assert code == 2 and "size mismatch" not in err and "RuntimeError" not in err
    assert f"checkpoint {path} holds another model than the config builds" in err
    assert "other shapes" in err


def test_yaml_errors_keep_their_point(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method:\n  name: mae\n  mask_ratio: [0.5\noptim: {lr: 1}\n")
    code, _, err = cli(capsys, "pretrain", bad)
    assert code == 2
    assert err.strip() == f"error: {bad} is not valid YAML: line 4, column 6: expected ',' or ']', but got ':'"
    code, _, err = cli(capsys, "pretrain", "mae", "--set", "optim.betas=[0.9")
    assert code == 2 and "is not valid YAML (line 1, column 5" in err and "^" not in err


# ---------------------------------------------------------------- export
def test_export_never_overwrites_its_input_or_itself(tiny_run, capsys):
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    before = ckpt.read_bytes()
    code, _, err = cli(capsys, "export", "--checkpoint", tiny_run, "--out", ckpt)
    assert code == 2 and "would replace the checkpoint" in err
    assert ckpt.read_bytes() == before
    code, _, err = cli(capsys, "export", "--checkpoint", ckpt, "--out", tiny_run / "vit.json")
    assert code == 2 and "pass --out NAME.pth" in err and not (tiny_run / "vit.json").exists()
    code, out, err = cli(capsys, "export", "--checkpoint", ckpt, "--out", tiny_run / "vit.pth")
    assert code == 0, err
    assert torch.load(tiny_run / "vit.pth", weights_only=True)
    assert yaml.safe_load((tiny_run / "vit.json").read_text())["checkpoint"] == str(ckpt)
    assert not list(tiny_run.glob(".*.tmp"))


# ---------------------------------------------------------------- --out that cannot hold a run folder
def test_out_on_an_existing_file_is_refused_before_training(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    code, out, err = cli(capsys, "pretrain", "mae", "--out", target)
    assert code == 2 and out == ""
    assert err == (f"error: --out {target} is a file, not a folder; pass --out with a new or existing folder\n")
    assert target.read_text() == "mine\n"


def test_out_inside_a_file_is_refused_before_training(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    code, _, err = cli(capsys, "pretrain", "mae", "--out", target / "run")
    assert code == 2
    assert err == (f"error: --out {target / 'run'}: {target} is a file, not a folder; "
                   "pass --out with a new or existing folder\n")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no one can make a folder")
def test_out_in_a_place_that_cannot_be_written_is_refused_before_training(capsys):
    place = Path("/proc/mimreg-no-such-place")  # even root cannot make a folder here
    code, _, err = cli(capsys, "pretrain", "mae", "--out", place / "run")
    assert code == 2
    assert err.startswith(f"error: --out {place / 'run'}: cannot make a folder in /proc (")
    assert err.endswith("); pass --out with a folder you can write to\n") and err.count("\n") == 1


def test_out_in_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    from mimreg.engine import run_folder

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run_folder.tempfile, "mkdtemp", refuse)  # as a read-only folder does, also for root
    with pytest.raises(MimregError, match=rf"^--out {tmp_path / 'run'}: cannot make a folder in {tmp_path} "
                                          r"\(permission denied\); pass --out with a folder you can write to$"):
        run_folder.check_out_folder(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_the_run_folder_check_is_the_one_pretrain_makes(tmp_path):
    from mimreg.engine.run_folder import RunFolder

    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(MimregError, match=r"--out .*file is a file, not a folder"):
        RunFolder(target).checkpoint_to_resume(resume=False)
