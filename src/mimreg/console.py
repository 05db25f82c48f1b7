"""Printing that never stops a run: a closed terminal or pipe loses the line, not the training."""

from __future__ import annotations

import sys


def say(text: str, *, bar: bool = False, err: bool = False) -> None:
    """Print `text` and flush; `bar`: through tqdm, above a progress bar. A closed stdout/stderr
    (BrokenPipeError, any OSError) drops the line."""
    try:
        if bar:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr if err else sys.stdout)
        else:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)
        (sys.stderr if err else sys.stdout).flush()
    except (BrokenPipeError, OSError, ValueError):  # ValueError: the stream was closed
        pass
