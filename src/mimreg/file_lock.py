"""An exclusive lock on a file that names its holder, released by the OS when the holder dies
(flock): what keeps two processes off one run folder, or one study point."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO


class LockHeld(Exception):
    """Another process holds the lock; the message names it ("pid N on HOST since ...")."""


def take_lock(path: Path) -> IO:
    """Lock `path` (created if missing) for this process, writing who holds it; the open file, whose
    closing releases the lock. Raises LockHeld when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise LockHeld(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def lock_holder(path: Path) -> str | None:
    """Who holds the lock on `path` ("pid N on HOST since ..."), or None when nobody does (the file
    is left as it is)."""
    if not Path(path).is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
