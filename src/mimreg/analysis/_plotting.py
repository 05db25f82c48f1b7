"""Headless figure creation and atomic PNG saving, without touching pyplot's global state."""

from __future__ import annotations

from pathlib import Path

from mimreg.io import atomic_write


def new_figure(width: float = 6.4, height: float = 4.4):
    """A Figure with one Axes, bound to the Agg canvas (works with no display)."""
    # Building Figure directly (not pyplot) leaves the caller's backend and open figures alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save_png(figure, path) -> Path:
    """Write `figure` to `path` as PNG atomically; create parent folders."""
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
