"""Atomic file writes: a reader (or a crash) never sees a half-written file, and a write that
fails (disk full, no permission) says which file in one line."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

from mimreg.errors import MimregError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class WriteError(MimregError):
    """A file that could not be written: the disk is full, or the folder is not writable."""


def default_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the process's umask (read without changing it
    for good: os.umask can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[IO], Any], binary: bool = True) -> Path:
    """Call `write(handle)` on a temporary sibling of `path`, then rename it into place. The file
    gets the mode a plain open() would give it (mkstemp's 0600 would make a run's checkpoints and
    summary private while its other files are not). An OSError becomes a WriteError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(write_failure_message(path, err)) from err
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(err, OSError):
            raise WriteError(write_failure_message(path, err)) from err
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any, default: Callable | None = None) -> Path:
    text = json.dumps(payload, indent=2, default=default) + "\n"
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def write_failure_message(path: str | Path, err: OSError) -> str:
    """One line for an OSError met writing `path`: the full-disk message, or the system's reason."""
    if err.errno in FULL_DISK_ERRNOS:
        return disk_full_message(path, err, advice="free some space and run the command again")
    reason = err.strerror or str(err) or type(err).__name__
    refused = err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    return f"cannot write {path}: {reason}; " + ("make its folder writable or choose another place" if refused
                                                 else "check the disk and the folder, then run the command again")


def disk_full_message(path: str | Path, err: BaseException,
                      advice: str = "free some space and resume with --resume (earlier checkpoints are intact)"
                      ) -> str | None:
    """A one-line "no space left on DEVICE writing PATH" when `err` (or the state of the disk after
    it) says the disk is full; None otherwise. torch.save reports a full disk as a RuntimeError
    ("unexpected pos"), so the free space is checked too."""
    import shutil

    folder = Path(path).parent
    causes = [err, err.__cause__, err.__context__]
    full = any(isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS for e in causes)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not full and (free is None or free > 16 * 2**20):
        return None
    return (f"no space left on {mount_of(folder)} writing {path}"
            + (f" ({free / 2**20:.1f} MiB free)" if free is not None else "") + f"; {advice}")


def mount_of(folder: Path) -> str:
    """`DEVICE (mounted at MOUNTPOINT)` for the file system holding `folder`."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists():
        folder = folder.parent
    mount = folder
    while mount != mount.parent and os.stat(mount.parent).st_dev == os.stat(mount).st_dev:
        mount = mount.parent
    device = str(mount)
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(mount):
                device = fields[0]
    except OSError:
        pass
    return f"{device} (mounted at {mount})"
