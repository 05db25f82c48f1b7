"""A study on this machine: `parallel` points at a time, each in its own process pinned to its
share of the cores (or to one GPU), so that runs do not fight over them. A point that fails is
recorded with its error and the others go on; one that another process runs is skipped and said so.

Each point runs in `python -m mimreg.study.worker` (its log: STUDY/logs/<point>.log): a crash, a
kill or an out-of-memory in one run cannot take the study down. SIGTERM to the study forwards it
to the running points, which stop with a checkpoint; re-running the study resumes them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mimreg.study.ledger import read_status
from mimreg.study.spec import Point, Study

BUSY_EXIT = 75  # the worker found the point's lock held (EX_TEMPFAIL)


@dataclass
class Outcome:
    point: str
    result: str  # done, failed, skipped, halted, interrupted
    detail: str = ""
    minutes: float = 0.0


@dataclass
class Slot:
    """Where one running point may compute: CPU cores (affinity) and a GPU index, or none."""

    cores: list[int]
    gpu: int | None = None
    process: subprocess.Popen | None = None
    point: Point | None = None
    began: float = 0.0
    log: Path | None = field(default=None, repr=False)


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def make_slots(parallel: int | None, threads: int, device: str) -> list[Slot]:
    """`parallel` slots (None: as many as the cores, or GPUs, allow), each with `threads` cores of its own
    where there are enough (fewer cores than asked: the slots share them, in turn)."""
    cores = available_cores()
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            from mimreg.errors import ConfigError

            raise ConfigError("run.device=cuda: this machine has no GPU; use --device cpu")
        parallel = min(parallel or gpus, gpus)
    parallel = parallel or max(1, len(cores) // threads)
    return [Slot([cores[(i * threads + j) % len(cores)] for j in range(threads)], i if device == "cuda" else None)
            for i in range(parallel)]


def run_local(study: Study, study_dir: Path, points: list[Point], slots: list[Slot], device: str,
              echo=print) -> list[Outcome]:
    """Run `points` in `slots`; returns one outcome per point, in the order they ended."""
    queue, outcomes = list(points), []
    (study_dir / "logs").mkdir(parents=True, exist_ok=True)
    previous = signal.getsignal(signal.SIGTERM)
    stopping = _forward_sigterm(slots)
    try:
        _schedule(study, study_dir, queue, slots, device, outcomes, len(points), stopping, echo)
    except KeyboardInterrupt:  # Ctrl-C: the points stop with a checkpoint; wait for them, then report
        signal.raise_signal(signal.SIGTERM)
        _schedule(study, study_dir, [], slots, device, outcomes, len(points), stopping, echo)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return outcomes


def _schedule(study: Study, study_dir: Path, queue: list[Point], slots: list[Slot], device: str,
              outcomes: list[Outcome], total: int, stopping, echo) -> None:
    """Start queued points in free slots and collect the ended ones until none is left running."""
    while queue or any(s.process for s in slots):
        for slot in slots:
            if slot.process is None and queue and not stopping():
                _start(slot, queue.pop(0), study, study_dir, device)
                echo(f"[{len(outcomes) + sum(s.process is not None for s in slots)}/{total}] started "
                     f"{slot.point.name} on cores {slot.cores}" + (f", GPU {slot.gpu}" if slot.gpu is not None else ""))
            elif slot.process is not None and slot.process.poll() is not None:
                outcome = _ended(slot, study_dir)
                outcomes.append(outcome)
                echo(f"[{len(outcomes)}/{total}] {outcome.result} {outcome.point}"
                     + (f": {outcome.detail}" if outcome.detail else "") + f" ({outcome.minutes:.1f} min)")
                slot.process = slot.point = None
        if stopping() and not any(s.process for s in slots):
            break
        time.sleep(0.2)


def _start(slot: Slot, point: Point, study: Study, study_dir: Path, device: str) -> None:
    threads = str(len(slot.cores))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)
    slot.log = study_dir / "logs" / f"{point.name}.log"
    command = [sys.executable, "-m", "mimreg.study.worker", str(study.path), str(study_dir), point.name,
               "--cores", ",".join(map(str, slot.cores)), "--device", device,
               *[part for item in study.extra for part in ("--set", item)]]
    slot.point, slot.began = point, time.time()
    with open(slot.log, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        slot.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env)


def _ended(slot: Slot, study_dir: Path) -> Outcome:
    code, name = slot.process.returncode, slot.point.name
    minutes = (time.time() - slot.began) / 60
    status = read_status(study_dir, name)
    if code == BUSY_EXIT:
        return Outcome(name, "skipped", f"running elsewhere ({_last_line(slot.log)})", minutes)
    if code == 0:
        return Outcome(name, "done" if status.state == "done" else "halted", "", minutes)
    if status.state == "failed":
        return Outcome(name, "failed", f"{status.error} (log: {slot.log})", minutes)
    reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return Outcome(name, "interrupted", f"{reason}; re-run the study to resume it (log: {slot.log})", minutes)


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _forward_sigterm(slots: list[Slot]):
    """On SIGTERM: no new points; the running ones get SIGTERM (they stop with a checkpoint)."""
    stopped = []

    def handle(signum, frame):
        stopped.append(signum)
        for slot in slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handle)
    return lambda: bool(stopped)
