"""Faults keep the run: a real `mimreg pretrain` subprocess is killed (SIGKILL), stopped (SIGTERM,
SIGINT) or cut short at chosen points, resumed each time, and every record and the final weights
are compared with an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mimreg.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from mimreg.engine.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "fault_runner.py"


def sets(*pairs: str) -> list[str]:
    return [a for kv in pairs for a in ("--set", kv)]


# u-mae (a regularizer, a monitor, the online probe, drop path, RankMe / alpha-ReQ every 2 steps) on
# synthetic images (the online k-NN on a small bank): 3 epochs of 4 steps, a checkpoint every 3 steps and at each epoch's end (steps 3,
# 4, 6, 8, 9, 12)
PRETRAIN = ["pretrain", "u-mae", *sets(
    "data.name=synthetic", "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2",
    "train.epochs=3", "train.device=cpu", "train.progress=false", "train.log_every=1", "train.monitor_every=2",
    "train.ckpt_every_steps=3", "train.keep_last=3", "model.drop_path=0.1", "train.rep_monitor_every=2",
    "train.rep_monitor_images=64", "train.knn_bank=64", "train.knn_queries=32")]
# the same steps with accumulation, on epochs whose micro-batch count is not a multiple of it:
# 14 micro-batches of 10 with accum 3 (12 used, 2 dropped), 9 with accum 2 (8 used, 1 dropped)
SCENARIOS = {
    "pretrain": (PRETRAIN + sets("data.subset=128", "optim.batch_size=32"), "done: 12 steps"),
    "pretrain-accum3": (PRETRAIN + sets("data.subset=140", "optim.batch_size=10", "optim.accum_steps=3"),
                        "done: 12 steps"),
    "pretrain-accum2": (PRETRAIN + sets("data.subset=90", "optim.batch_size=10", "optim.accum_steps=2"),
                        "done: 12 steps"),
    # fine-tuning a tiny u-mae: 62 training images (1/8 of each class) in batches of 14, 3 epochs of 4 steps
    "finetune": (["eval", "finetune", "--checkpoint", "{pretrained}", "--device", "cpu", "--epochs", "3",
                  "--batch-size", "14", "--fraction", "0.125", "--test-images", "32", "--ckpt-every-steps", "3",
                  "--keep-last", "3", "--warmup-epochs", "0.5", "--blr", "2e-3", "--drop-path", "0.1"],
                 "fine-tuned: top-1"),
}


class Scenario:
    """One command line that trains, run with faults injected (tests/fault_runner.py)."""

    def __init__(self, name: str, pretrained: Path | None = None):
        args, self.done = SCENARIOS[name]
        self.args = [str(pretrained) if a == "{pretrained}" else a for a in args]

    def run(self, fault: str, out: Path, *extra: str, wait: bool = True, **env):
        cmd = [sys.executable, str(RUNNER), fault, *self.args, "--out", str(out), *extra]
        environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **env}
        if not wait:
            return subprocess.Popen(cmd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=300)


def without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(path / "metrics.jsonl")]


def assert_same_records(run: Path, reference: Path) -> None:
    """Every record of metrics.jsonl, in order, equals the reference run's (time aside)."""
    got, want = without_time(run), without_time(reference)
    assert [(r["kind"], r.get("step"), sorted(r)) for r in got] == [(r["kind"], r.get("step"), sorted(r)) for r in want]
    for a, b in zip(got, want):
        numbers = {k for k, v in b.items() if isinstance(v, float)}
        assert {k: v for k, v in a.items() if k not in numbers} == {k: v for k, v in b.items() if k not in numbers}
        assert {k: a[k] for k in numbers} == pytest.approx({k: b[k] for k in numbers}, rel=1e-6, abs=1e-7)


@pytest.fixture(scope="module")
def references(request, tmp_path_factory):
    """name -> (the scenario, its uninterrupted run), each run once per module."""
    made = {}

    def reference(name: str) -> tuple[Scenario, Path]:
        if name not in made:
            pretrained = None
            if name == "finetune":  # a private copy: fine-tuning writes its result into the run folder
                pretrained = shutil.copytree(request.getfixturevalue("tiny_run_dir"),
                                             tmp_path_factory.mktemp("pre") / "run")
            chosen = Scenario(name, pretrained)
            out = tmp_path_factory.mktemp("faults") / "reference"
            proc = chosen.run("none", out)
            assert proc.returncode == 0, proc.stderr
            made[name] = chosen, out
        return made[name]

    return reference


@pytest.fixture(scope="module", params=[  # all but pretrain (~65 s each) in make test-slow
    "pretrain", *(pytest.param(s, marks=pytest.mark.slow) for s in ("finetune", "pretrain-accum3", "pretrain-accum2"))])
def scenario(request, references) -> tuple[Scenario, Path]:
    """A scenario and its uninterrupted run."""
    return references(request.param)


def test_every_fault_is_resumed_to_the_uninterrupted_run(scenario, tmp_path):
    chosen, reference = scenario
    run_mimreg = chosen.run
    run = tmp_path / "run"
    ckpts = run / "checkpoints"

    # killed after step 5: the epoch-end checkpoint of step 4 is the latest
    proc = run_mimreg("SIGKILL@after_step=5", run)
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(ckpts).name == "ckpt_00000004.pt"

    # killed after epoch 1's record, before that epoch's checkpoint: resumed from step 6
    proc = run_mimreg("SIGKILL@after_epoch_record=8", run, "--resume")
    assert proc.returncode == -signal.SIGKILL and "resuming from" in proc.stdout and "step 4" in proc.stdout
    assert latest_checkpoint(ckpts).name == "ckpt_00000006.pt"

    # Ctrl-C while the checkpoint of step 8 is written: the write completes, then the run stops
    proc = run_mimreg("SIGINT@in_checkpoint_write=8", run, "--resume")
    assert proc.returncode == 130, proc.stderr
    assert "stopped by SIGINT at step 8" in proc.stderr and "--resume" in proc.stderr.splitlines()[-1]
    assert "unexpected pos" not in proc.stderr and "Traceback" not in proc.stderr
    assert load_checkpoint(ckpts / "ckpt_00000008.pt")["step"] == 8
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGINT" and summary["checkpoint"].endswith("ckpt_00000008.pt")

    # killed while writing the checkpoint of step 9: a half-written temporary file stays behind
    proc = run_mimreg("SIGKILL@in_checkpoint_write=9", run, "--resume")
    assert proc.returncode == -signal.SIGKILL
    assert len(list(ckpts.glob(".ckpt_00000009.pt.*.tmp"))) == 1
    assert latest_checkpoint(ckpts).name == "ckpt_00000008.pt"

    # killed half-way through a metrics line: the next start removes the temporary and reads past the cut
    proc = run_mimreg("SIGKILL@in_metrics_line=10", run, "--resume")
    assert proc.returncode == -signal.SIGKILL
    assert not list(ckpts.glob("*.tmp"))
    assert not (run / "metrics.jsonl").read_text().endswith("\n")

    # SIGTERM (preemption) sent from outside while step 11 is done: checkpoint 11, exit 143; a second
    # run on the same folder meanwhile is refused and names the holder
    marker = tmp_path / "paused"
    proc = run_mimreg("SIGTERM@pause_after_step=11", run, "--resume", wait=False, FAULT_MARKER=str(marker))
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()
    intruder = run_mimreg("none", run, "--resume")
    assert intruder.returncode == 2
    assert f"is in use by pid {proc.pid}" in intruder.stderr, intruder.stderr
    proc.send_signal(signal.SIGTERM)
    marker.with_suffix(".go").write_text("")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step 11" in err
    assert latest_checkpoint(ckpts).name == "ckpt_00000011.pt"

    proc = run_mimreg("none", run, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert chosen.done in proc.stdout

    # every record, in order, equals the uninterrupted run's (time aside), and so do the weights
    if chosen.args[0] == "pretrain":  # RankMe / alpha-ReQ records among them
        assert [r["step"] for r in without_time(reference) if r["kind"] == "rep"] == [2, 4, 6, 8, 10, 12]
    assert_same_records(run, reference)
    final, expected = load_checkpoint(run)["model"], load_checkpoint(reference)["model"]
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=1e-6, msg=key)
    assert json.loads((run / "summary.json").read_text())["stopped_by"] is None
    assert [p.name for p in list_checkpoints(ckpts)] == [f"ckpt_{s:08d}.pt" for s in (9, 11, 12)]


def test_sighup_stops_with_a_checkpoint_and_resumes(references, tmp_path):
    """A closed terminal (SIGHUP) stops the run as SIGTERM does: after the step, with a checkpoint,
    exit 129; the resumed run ends as the uninterrupted one."""
    chosen, reference = references("pretrain")
    run_mimreg = chosen.run
    run, marker = tmp_path / "run", tmp_path / "paused"
    proc = run_mimreg("SIGHUP@pause_after_step=6", run, wait=False, FAULT_MARKER=str(marker))
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()
    proc.send_signal(signal.SIGHUP)
    marker.with_suffix(".go").write_text("")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "SIGHUP received: stopping after this step" in err and "stopped by SIGHUP at step 6" in err
    assert latest_checkpoint(run / "checkpoints").name == "ckpt_00000006.pt"
    proc = run_mimreg("none", run, "--resume")
    assert proc.returncode == 0 and "done: 12 steps" in proc.stdout, proc.stderr
    assert_same_records(run, reference)


def test_a_closed_stdout_pipe_never_stops_training(tmp_path):
    """`mimreg pretrain ... | head -1`: the reader goes away after the first line; the run still
    trains to its end (one epoch here) and writes its final checkpoint, with no error at exit."""
    run = tmp_path / "run"
    proc = Scenario("pretrain").run("none", run, "--set", "train.epochs=1", wait=False)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` exits
    err = proc.stderr.read()
    proc.wait(timeout=300)
    assert first.startswith("digits/u-mae: 128 images"), first
    assert proc.returncode == 0, err
    assert err == ""  # neither a BrokenPipeError nor Python's "Exception ignored ... flush" at exit
    assert latest_checkpoint(run / "checkpoints").name == "ckpt_00000004.pt"
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
