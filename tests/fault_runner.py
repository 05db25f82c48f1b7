"""Run the `mimreg` command line with one fault injected at a chosen point of the run.

    python tests/fault_runner.py SIGNAL@POINT=N mimreg-args...
    python tests/fault_runner.py none mimreg-args...

POINT: after_step (after optimizer step N), after_epoch_record (after the epoch record of step N
is written, before the epoch's checkpoint), in_checkpoint_write (while the checkpoint of step N is
being written; with SIGKILL some bytes of it are on disk), in_metrics_line (half-way through the
train record of step N), pause_after_step (after step N write the pid to $FAULT_MARKER and wait
until $FAULT_MARKER.go exists: the test sends a real signal from outside meanwhile; SIGNAL is
ignored). The signal is a real one, sent to this process with os.kill.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def install(spec: str) -> None:
    if spec == "none":
        return
    name, _, point = spec.partition("@")
    where, _, number = point.partition("=")
    at = int(number)
    sig = signal.Signals[name]

    def fire() -> None:
        os.kill(os.getpid(), sig)

    import torch

    from mimreg.engine import loop, metrics

    if where in ("after_step", "pause_after_step"):
        step_once = loop.Trainer.optimizer_step

        def optimizer_step(self):
            step_once(self)
            if self.step == at:
                wait_for_the_test() if where == "pause_after_step" else fire()

        loop.Trainer.optimizer_step = optimizer_step
    elif where in ("after_epoch_record", "in_metrics_line"):
        write_once = metrics.MetricsWriter.write

        def write(self, record):
            if where == "in_metrics_line" and record.get("kind") == "train" and record.get("step") == at:
                with self.path.open("a") as handle:
                    handle.write(json.dumps(record)[:25])
                fire()
            write_once(self, record)
            if where == "after_epoch_record" and record.get("kind") == "epoch" and record.get("step") == at:
                fire()

        metrics.MetricsWriter.write = write
    elif where == "in_checkpoint_write":
        save_once = torch.save

        def save(obj, handle, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("step") == at:
                if sig == signal.SIGKILL:
                    handle.write(b"PK\x03\x04 a checkpoint cut short")
                    handle.flush()
                fire()  # SIGKILL ends the process here; SIGINT/SIGTERM only raise the loop's flag
            return save_once(obj, handle, *args, **kwargs)

        torch.save = save
    else:
        raise SystemExit(f"unknown fault point {where!r}")


def wait_for_the_test() -> None:
    marker = Path(os.environ["FAULT_MARKER"])
    marker.write_text(str(os.getpid()))
    go = marker.with_suffix(".go")
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


if __name__ == "__main__":
    install(sys.argv[1])
    from mimreg.cli import main

    sys.exit(main(sys.argv[2:]))
