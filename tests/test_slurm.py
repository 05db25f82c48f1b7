"""`mimreg submit` through submitit's LocalExecutor: 2 tasks form the process group from submitit's
environment; the time-limit signal (USR2) makes the run checkpoint, submitit requeues the job, and
the requeued job resumes and finishes the run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mimreg.engine.metrics import read_metrics
from mimreg.errors import MimregError

submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install 'mimreg[slurm]')")

from mimreg.slurm import Resources, submit  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
# 64 images / (4 per task x 2 tasks) = 8 steps: time to send the signal while it trains
SETS = ["data.subset=64", "optim.batch_size=4", "train.keep_last=20"]


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (the controller's tasks), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def train_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path) if r["kind"] == "train"] if path.is_file() else []


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow  # a torchrun or job of ~15-20 s: make test-slow
def test_timeout_signal_checkpoints_requeues_and_the_job_resumes(tmp_path, monkeypatch, tiny_sets):
    monkeypatch.setenv("PYTHONPATH", f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    res = Resources(gpus_per_node=0, tasks_per_node=2, cpus_per_task=1, timeout_min=10, max_requeues=2)
    job = submit("digits/mae", [*tiny_sets, *SETS], run, res, cluster="local")
    try:
        wait_for(lambda: train_steps(run), 180, "the first logged step")
        tasks = child_pids(job._process.pid)
        assert len(tasks) == 2
        for pid in tasks:  # what SLURM does signal_delay_s before the time limit
            os.kill(pid, signal.SIGUSR2)
        result = job.results()[0]  # rank 0's
    finally:
        job.cancel(check=False)
    log = job.stdout() + (job.stderr() or "")
    assert "SIGUSR2 received: stopping after this step with a checkpoint" in log
    assert "Requeued job" in log
    stopped_at = int(log.split("resuming from ")[1].split(" at step ")[1].split()[0])
    assert 0 < stopped_at < 8  # it stopped mid-run with a checkpoint, and the requeued job resumed there
    assert (run / "checkpoints" / f"ckpt_{stopped_at:08d}.pt").is_file()
    assert result["steps"] == 8 and not result["halted"]
    assert train_steps(run) == list(range(1, 9))  # each step logged once across the two jobs
    start = next(r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "start")
    assert start["world"] == 2  # both tasks joined one process group from submitit's environment


def test_submit_refuses_a_folder_with_checkpoints_without_resume(tiny_run):
    with pytest.raises(MimregError, match="already holds checkpoints.*--resume"):
        submit(str(tiny_run / "config.yaml"), [], tiny_run, Resources(), cluster="local")


def test_sbatch_script_asks_for_the_resources_and_the_timeout_signal(tmp_path, monkeypatch):
    from mimreg.slurm import build_executor

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")  # submitit checks that srun exists
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    res = Resources(nodes=2, gpus_per_node=8, partition="gpu", timeout_min=240, account="proj", signal_delay_s=90)
    script = build_executor(tmp_path / "logs", res, "slurm", "mimreg-x")._executor._make_submission_file_text("CMD", "u")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--account=proj",
                 "--time=240", "--signal=USR2@90", "--cpus-per-task=8"):
        assert f"#SBATCH {line}\n" in script
    assert "srun" in script and "CMD" in script


def test_slurm_executor_without_slurm_says_what_to_do(tmp_path, monkeypatch):
    from mimreg.slurm import build_executor

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(MimregError, match="srun.*--executor local"):
        build_executor(tmp_path / "logs", Resources(), "slurm", "mimreg-x")


def test_a_fine_tuning_is_submitted_and_runs_as_the_command_would(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "ft"
    settings = ["epochs=1", "batch_size=16", "fraction=0.125", "test_images=32", "warmup_epochs=0.5"]
    with pytest.raises(MimregError, match="unknown fine-tuning setting"):
        submit("finetune", ["epochz=1"], out, Resources(), cluster="local", finetune=str(tiny_run))
    res = Resources(gpus_per_node=0, tasks_per_node=1, cpus_per_task=1, timeout_min=10)
    job = submit("finetune", settings, out, res, cluster="local", finetune=str(tiny_run))
    try:
        result = job.results()[0]
    finally:
        job.cancel(check=False)
    assert result["steps"] == 3 and not result["halted"] and 0 <= result["top1"] <= 100
    assert result["checkpoint"].endswith("ckpt_00000003.pt")
    start = next(r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "start")
    assert start["config"] == "finetune" and start["pretrained"] == str(tiny_run.resolve())
    assert list((tiny_run / "evals").glob("finetune_*.json"))  # the result, as `mimreg eval finetune` writes it
    with pytest.raises(MimregError, match="already holds checkpoints.*--resume"):
        submit("finetune", settings, out, res, cluster="local", finetune=str(tiny_run))
