"""`mimreg study` on this machine: points run side by side on their own cores, a failing point is
reported while the others go on, a point another process holds is skipped and said so, a re-run
skips what is done, and a study stopped by SIGTERM resumes its runs exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mimreg.cli import main
from mimreg.engine.metrics import read_metrics
from mimreg.study.ledger import PointLock, read_status
from mimreg.study.spec import load_study

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ("{data.name: synthetic, data.img_size: 32, model.arch: vit_micro, method.decoder_dim: 32, "
        "method.decoder_depth: 1, method.decoder_heads: 2, optim.warmup_epochs: 0, train.progress: false, "
        "train.log_every: 1, train.knn_every: 0, train.device: cpu}")


@pytest.fixture(autouse=True)
def workers_import_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def study_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"set: {TINY}\n" + textwrap.dedent(body))
    return path


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


def test_points_run_pinned_side_by_side_failures_and_busy_points_are_reported(tmp_path, capsys):
    path = study_file(tmp_path, """
        seeds: 2
        grids:
          - recipes: [digits/mae]
            set: {data.subset: 32, optim.batch_size: 16, train.epochs: 1}
          - recipes: [digits/mae]
            set: {data.name: imagefolder, data.root: /nonexistent/images, data.img_size: 32, train.epochs: 1}
            seeds: [0]
        evaluations:
          - {protocols: [knn, erank], pools: [cls]}
        run: {parallel: 2, threads: 1}
        """)
    out = tmp_path / "study"
    names = [p.name for p in load_study(path).points]
    good, busy, bad = names[0], names[1], names[2]
    with PointLock(out, busy):  # as if another `mimreg study` ran this point now
        assert main(["study", str(path), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "study: 1 done, 1 failed, 1 skipped" in text
    assert f"skipped {busy}: running elsewhere (point {busy} is in use by pid {os.getpid()}" in text
    assert f"failed {bad}: DataError: Image folder /nonexistent/images does not exist" in text
    assert read_status(out, good).state == "done" and read_status(out, bad).state == "failed"
    assert {p.name for p in (out / "runs" / good / "evals").glob("*.json")} == {
        "knn_synthetic_cls.json", "erank_synthetic_cls.json"}
    log = (out / "logs" / f"{good}.log").read_text()
    assert f"point {good}: cores [" in log and "], 1 thread(s)" in log  # pinned to one core, one thread
    # re-run: the finished point is skipped, the busy one runs now, the failing one is retried
    assert main(["study", str(path), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "study: 1 done, 1 failed, 1 already finished (skipped)" in text
    assert f"] done {busy}" in text and f"] done {good}" not in text
    assert losses(out / "runs" / good) != losses(out / "runs" / busy)  # seeds 0 and 1 differ


@pytest.mark.slow  # three studies of 64 steps: ~50 s each (make test-slow)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_study_stopped_by_a_signal_resumes_its_run_exactly(tmp_path, stop):
    # 64 steps, the signal after the third: the run is still going when the signal comes
    path = study_file(tmp_path, """
        recipes: [digits/mae]
        set: {data.subset: 64, optim.batch_size: 8, train.epochs: 8, train.ckpt_every_steps: 4}
        run: {parallel: 1}
        """)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["study", str(path), "--out", str(whole)]) == 0
    name = load_study(path).points[0].name
    command = [sys.executable, "-m", "mimreg.cli", "study", str(path), "--out", str(stopped)]
    # SIGINT at its default in the study: a shell's background job (e.g. `nohup make test &`) starts with
    # SIGINT ignored, which Python then keeps (no KeyboardInterrupt), so Ctrl-C could not be tested there
    study = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = stopped / "runs" / name / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and len(losses(metrics.parent)) >= 3):
        assert time.monotonic() < deadline and study.poll() is None, "the run did not start"
        time.sleep(0.05)
    study.send_signal(stop)  # to the study alone; it forwards SIGTERM to the running point: a checkpoint
    output = study.communicate(timeout=120)[0]
    assert study.returncode == 1, output
    assert f"interrupted {name}: exit code 143; re-run the study to resume it" in output
    steps_before = len(losses(metrics.parent))
    assert 3 <= steps_before < 64  # stopped mid-run
    assert main(["study", str(path), "--out", str(stopped)]) == 0
    log = (stopped / "logs" / f"{name}.log").read_text()
    assert f"resuming from {stopped / 'runs' / name / 'checkpoints'}" in log
    assert losses(stopped / "runs" / name) == losses(whole / "runs" / name)  # every step, as uninterrupted
