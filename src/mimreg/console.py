"""Printing that never stops training.

A closed pipe (`mimreg pretrain ... | head -1`) or a closed terminal (SIGHUP) makes every later write
to stdout or stderr fail (BrokenPipeError, EIO). A line that cannot be shown is dropped, and the
stream's file descriptor goes to /dev/null, so that later writes and Python's own flush at exit
succeed too: the run goes on to its checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import sys


def say(*parts, file=None, sep: str = " ", end: str = "\n") -> None:
    """`print(*parts, flush=True)` to `file` (stdout by default) that drops the line if it cannot be written."""
    stream = file if file is not None else sys.stdout
    try:
        print(*parts, file=stream, sep=sep, end=end, flush=True)
    except OSError:  # BrokenPipeError, EIO of a closed terminal, ENOSPC of a full disk
        silence(stream)


def silence(stream) -> None:
    """Point `stream`'s file descriptor at /dev/null (nothing to do for a stream without one)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO, pytest's capture, a closed stream
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class GuardedStream:
    """A text stream whose write and flush drop what cannot be written instead of raising."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            silence(self.stream)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            silence(self.stream)

    def __getattr__(self, name):  # isatty, fileno, encoding...: the stream's own
        return getattr(self.stream, name)


@contextlib.contextmanager
def guarded_output():
    """While inside, sys.stdout and sys.stderr never raise on write or flush (tqdm, print, logging
    all go through them); on the way out both are flushed the same way, so that Python's flush at
    exit finds nothing left to fail on."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = GuardedStream(sys.stdout), GuardedStream(sys.stderr)
    try:
        yield
    finally:
        guarded = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = saved
        for stream in guarded:
            if isinstance(stream, GuardedStream):
                stream.flush()
