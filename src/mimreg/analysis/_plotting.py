"""Headless figure creation and atomic PNG saving, without touching pyplot's global state."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def new_figure(width: float = 6.4, height: float = 4.4):
    """A Figure with one Axes, bound to the Agg canvas (works with no display)."""
    # Building Figure directly (not pyplot) leaves the caller's backend and open figures alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save_png(figure, path) -> Path:
    """Write `figure` to `path` as PNG via a temporary sibling and os.replace; create parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path
