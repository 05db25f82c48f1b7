"""What a study has done, point by point: STUDY/status/<point>.json, and a lock per point.

The status says whether the point's pretraining finished, which evaluations are done, and the last
error; a re-run skips what is done. The lock (an flock on STUDY/status/<point>.lock, released by
the OS when its process dies) keeps two study commands from running one point at the same time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mimreg.file_lock import LockHeld, lock_holder, take_lock
from mimreg.io import write_json_atomic


@dataclass
class PointStatus:
    state: str = "pending"  # pending, running, done, failed
    pretrained: bool = False
    evaluations: list[str] = field(default_factory=list)  # keys of the evaluations done
    error: str | None = None
    minutes: float = 0.0  # wall time of the attempts that ended, summed
    overrides: list[str] | None = None  # the point's settings when it first ran


def status_path(study_dir: Path, name: str) -> Path:
    return Path(study_dir) / "status" / f"{name}.json"


def lock_path(study_dir: Path, name: str) -> Path:
    return Path(study_dir) / "status" / f"{name}.lock"


def read_status(study_dir: Path, name: str) -> PointStatus:
    path = status_path(study_dir, name)
    if not path.is_file():
        return PointStatus()
    try:
        return PointStatus(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return PointStatus()  # a status written by a killed process: the run's own files say what is done


def write_status(study_dir: Path, name: str, status: PointStatus) -> None:
    write_json_atomic(status_path(study_dir, name), asdict(status))


def shown_state(study_dir: Path, name: str, status: PointStatus) -> str:
    """The state to show: a point whose status says running but whose lock nobody holds (its process
    was killed) is "interrupted"; the next run of the study resumes it."""
    if status.state == "running" and lock_holder(lock_path(study_dir, name)) is None:
        return "interrupted"
    return status.state


PointBusy = LockHeld  # another process runs the point; the message names it


class PointLock:
    """Hold STUDY/status/<point>.lock for the life of this object (a context manager)."""

    def __init__(self, study_dir: Path, name: str):
        self.path = lock_path(study_dir, name)
        self._handle = None

    def __enter__(self) -> "PointLock":
        self._handle = take_lock(self.path)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()
