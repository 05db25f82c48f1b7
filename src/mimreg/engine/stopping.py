"""Stopping a run cleanly on SIGTERM (what SLURM and Kubernetes send before preemption), Ctrl-C or
SIGHUP (its terminal was closed): the signal only raises a flag; the loop finishes its step, writes
a checkpoint and stops."""

from __future__ import annotations

import signal
import sys
import threading

from mimreg import distributed as dist
from mimreg.console import say

# SIGHUP: the terminal that started the run was closed (no SIGHUP on Windows)
SIGNALS = (signal.SIGTERM, signal.SIGINT, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


class GracefulStop:
    """Context manager: while inside, SIGTERM, SIGINT and SIGHUP set `requested` instead of killing
    the process. A second SIGINT aborts at once (KeyboardInterrupt). Outside the main thread, where
    Python cannot install handlers, it does nothing."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        if dist.is_main_process():
            say(f"\n{self.signal_name} received: stopping after this step with a checkpoint "
                  "(Ctrl-C again aborts at once)", file=sys.stderr)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

