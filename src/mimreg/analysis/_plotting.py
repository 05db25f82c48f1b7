"""Headless figure creation and atomic PNG saving, without touching pyplot's global state."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mimreg.io import atomic_write

DPI = 120


def new_figure(width: float = 6.4, height: float = 4.4, rows: int = 1, columns: int = 1, **subplot_kw):
    """A Figure bound to the Agg canvas (works with no display) and its Axes: one Axes, or a
    (rows, columns) array of them when either is above 1."""
    # Building Figure directly (not pyplot) leaves the caller's backend and open figures alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    if rows == 1 and columns == 1:
        return figure, figure.add_subplot(**subplot_kw)
    return figure, figure.subplots(rows, columns, squeeze=False, subplot_kw=subplot_kw)


def save_png(figure, path) -> Path:
    """Write `figure` to `path` as PNG atomically; create parent folders."""
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))


def image_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], title: str | None = None,
               inches: float = 1.0, gap: int = 2):
    """A figure of RGB panels (H, W, 3 in [0, 1]) of one size, one labelled row per entry of `rows`
    (e.g. one kind of picture), one column per image. The panels are laid into one mosaic drawn
    once (fast, whatever their number), pixels as blocks so patch boundaries stay where they are."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    mosaic = np.ones((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3))
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            mosaic[top:top + height, left:left + width] = np.clip(panel, 0, 1)
    figure, ax = new_figure(0.9 + inches * columns, inches * len(rows) + (0.4 if title else 0.1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (height + gap) + height / 2 for r in range(len(rows))], list(row_labels), fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return figure
