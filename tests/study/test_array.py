"""`mimreg study --executor submitit-local`: the SLURM job-array path run by submitit on this
machine. An element killed mid-run (SIGKILL: no checkpoint at the kill) is reported, and re-running
the study resumes it from its last checkpoint to the records of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason="submitit is not installed (pip install 'mimreg[slurm]')")

from mimreg.cli import main  # noqa: E402
from mimreg.engine.metrics import read_metrics  # noqa: E402
from mimreg.study.ledger import read_status  # noqa: E402
from mimreg.study.spec import load_study  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ("{data.name: synthetic, data.img_size: 32, model.arch: vit_micro, method.decoder_dim: 32, "
        "method.decoder_depth: 1, method.decoder_heads: 2, optim.warmup_epochs: 0, train.progress: false, "
        "train.log_every: 1, train.knn_every: 0, train.device: cpu, data.subset: 64, optim.batch_size: 8, "
        "train.epochs: 2, train.ckpt_every_steps: 2}")


def losses(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    return [(r["step"], r["loss"]) for r in read_metrics(path) if r["kind"] == "train"] if path.is_file() else []


def kill_when(run: Path, lock: Path, steps: int, timeout: float = 240) -> None:
    """SIGKILL the process holding the point's lock (its "pid N on ..." line) once `run` logged `steps`."""
    deadline = time.monotonic() + timeout
    while len(losses(run)) < steps:
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    os.kill(int(lock.read_text().split()[1]), signal.SIGKILL)


@pytest.mark.slow  # a job array of two elements, killed and resumed: ~60 s (make test-slow)
def test_a_killed_array_element_is_reported_and_resumed_by_the_next_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "study.yaml"
    path.write_text(f"set: {TINY}\n" + textwrap.dedent("""
        recipes: [digits/mae]
        seeds: [0, 1]
        evaluations: [{protocol: erank}]
        """))
    reference, out = tmp_path / "reference", tmp_path / "array"
    first, second = [p.name for p in load_study(path).points]
    assert main(["study", str(path), "--out", str(reference), "--parallel", "1"]) == 0  # uninterrupted, locally

    killer = threading.Thread(target=kill_when, args=(out / "runs" / first, out / "status" / f"{first}.lock", 5))
    killer.start()  # past the element's checkpoint of step 4
    code = main(["study", str(path), "--out", str(out), "--executor", "submitit-local"])
    killer.join()
    text = capsys.readouterr().out
    assert code == 1, text
    assert f"done {second}" in text and f"failed {first}:" in text
    assert read_status(out, second).state == "done" and not read_status(out, first).pretrained
    killed_at = len(losses(out / "runs" / first))
    assert 5 <= killed_at < 16
    # the next run submits the killed point only, which resumes from its checkpoint of step 4 (or later)
    assert main(["study", str(path), "--out", str(out), "--executor", "submitit-local"]) == 0
    text = capsys.readouterr().out
    assert "1 element(s)" in text and f"done {first}" in text
    logs = "".join(f.read_text() for f in (out / "submitit").glob("*_log.out"))
    assert f"resuming from {out / 'runs' / first / 'checkpoints'}" in logs  # not a restart from scratch
    assert losses(out / "runs" / first) == losses(reference / "runs" / first)
    assert losses(out / "runs" / second) == losses(reference / "runs" / second)
    assert read_status(out, first).evaluations == ['erank:{}']
