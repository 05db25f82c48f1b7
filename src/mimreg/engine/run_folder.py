"""The run folder: one run at a time (a lock), its config, its metrics file and its summary.

Layout: config.yaml, metrics.jsonl, summary.json, checkpoints/ckpt_<step>.pt, .lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

import yaml

from mimreg.config import Config, config_from_stored, config_text, config_to_dict
from mimreg.engine.checkpoint import latest_checkpoint, load_checkpoint
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError, MimregError
from mimreg.io import atomic_write, write_json_atomic

# settings that may change between a run and its resumption
RESUMABLE_KEYS = ("train.halt_after_steps", "train.progress", "train.device", "train.strategy",
                  "train.grad_checkpointing", "train.dist_timeout_s")


class RunFolder:
    """A pretraining run's folder. `open()` locks it for this process (a second run on the same
    folder is refused; the lock of a dead process is released by the OS and taken over)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"
        self._lock = None

    # ------------------------------------------------------------ lock
    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise MimregError(f"run folder {self.path} is in use by {holder}; wait for that run to end, "
                              "or pass --out NEW_FOLDER") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._lock = handle
        self.remove_stale_temporaries()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def remove_stale_temporaries(self) -> list[Path]:
        """Half-written files left by a process killed during an atomic write (we hold the lock,
        so no other writer is using them)."""
        stale = [p for folder in (self.path, self.checkpoints) if folder.is_dir()
                 for p in folder.glob(".*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # ------------------------------------------------------------ config
    def check_resumable(self, cfg: Config, resume: bool) -> Path | None:
        """The checkpoint to resume from (None: start fresh); refuses a folder that holds a run
        when not resuming, and a config that differs from the run's own."""
        found = latest_checkpoint(self.checkpoints)
        if found is not None and not resume:
            raise MimregError(f"run folder {self.path} already holds checkpoints ({found.name}); pass --resume "
                              "to continue that run, or --out NEW_FOLDER to start a new one")
        if found is None:
            return None
        saved = load_checkpoint(found).get("config")
        if saved is None and (self.path / "config.yaml").is_file():
            saved = yaml.safe_load((self.path / "config.yaml").read_text())
        if saved is None:
            raise MimregError(f"checkpoint {found} has no config and {self.path} no config.yaml: it was not "
                              "written by mimreg pretrain; start a new run with --out NEW_FOLDER")
        changed = changed_keys(config_to_dict(config_from_stored(saved)), config_to_dict(cfg))
        changed = [key for key in changed if key not in RESUMABLE_KEYS]
        if changed:
            raise ConfigError(f"--resume with a config that differs from the run's own in {changed}; "
                              "resume with the same config, or start a new run with --out NEW_FOLDER")
        return found

    def write_config(self, cfg: Config, notes: list[str] = ()) -> None:
        """config.yaml, headed by `notes` as comment lines (e.g. the lr in force and its key)."""
        text = config_text(cfg, notes)
        atomic_write(self.path / "config.yaml", lambda handle: handle.write(text), binary=False)

    # ------------------------------------------------------------ metrics and summary
    def truncate_metrics(self, step: int) -> None:
        """Keep the records up to the checkpoint we resume from (the rest will be written again)."""
        if step == 0:
            self.metrics.unlink(missing_ok=True)
            return
        # gate and skipped-image records carry the step before its optimizer update: strictly earlier only
        kept = [r for r in read_metrics(self.metrics)
                if r.get("step", 0) < step or (r.get("step", 0) == step and r.get("kind") not in ("gate", "skipped_images"))]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.metrics, lambda handle: handle.write(text), binary=False)

    def read_summary(self) -> dict:
        path = self.path / "summary.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}  # rewritten at the end of this run

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.path / "summary.json", summary)


def changed_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += changed_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
