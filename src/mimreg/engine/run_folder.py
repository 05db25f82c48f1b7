"""The run folder: one run at a time (a lock), its config, its metrics file and its summary.

Layout: config.yaml, metrics.jsonl, summary.json, checkpoints/ckpt_<step>.pt, .lock.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml

from mimreg.engine.checkpoint import latest_checkpoint
from mimreg.engine.metrics import read_metrics
from mimreg.errors import MimregError
from mimreg.file_lock import LockHeld, take_lock
from mimreg.io import atomic_write, write_json_atomic


def check_out_folder(path: str | Path) -> None:
    """Refuse, in one line, a run folder that cannot be made or written: `path` or a folder above
    it is a file, or the nearest existing folder refuses a new folder (read-only, no permission).
    Probed by making (and removing) a folder there, which tells what the file system allows."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MimregError(f"--out {path} is a file, not a folder; pass --out with a new or existing folder")
    place = path
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise MimregError(f"--out {path}: {place} is a file, not a folder; pass --out with a new or existing folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mimreg-probe-", dir=place))
    except OSError as err:
        reason = (err.strerror or type(err).__name__).lower()
        raise MimregError(f"--out {path}: cannot make a folder in {place} ({reason}); "
                          "pass --out with a folder you can write to") from None


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
        try:
            handle = take_lock(self.path / ".lock")
        except LockHeld as holder:
            raise MimregError(f"run folder {self.path} is in use by {holder}; wait for that run to end, "
                              "or pass --out NEW_FOLDER") from None
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
    def checkpoint_to_resume(self, resume: bool) -> Path | None:
        """The latest checkpoint (None: start fresh); refuses a folder that holds a run when not
        resuming. What a resume may change is engine/resume_rules.py's to say."""
        check_out_folder(self.path)
        found = latest_checkpoint(self.checkpoints)
        if found is not None and not resume:
            raise MimregError(f"run folder {self.path} already holds checkpoints ({found.name}); pass --resume "
                              "to continue that run, or --out NEW_FOLDER to start a new one")
        return found

    def write_config(self, record: dict, notes: list[str] = ()) -> None:
        """config.yaml: the run's config `record`, headed by `notes` as comment lines (e.g. the lr in force)."""
        header = "".join(f"# {line}\n" for note in notes for line in note.splitlines())
        text = header + yaml.safe_dump(record, sort_keys=False)
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

