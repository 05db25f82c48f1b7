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
               column_labels: Sequence[str] | None = None, inches: float = 1.0):
    """A figure of RGB panels (H, W, 3 in [0, 1]), one labelled row per entry of `rows` (e.g. one
    kind of picture), one column per image. Pixels are drawn as blocks (no smoothing), so patch
    boundaries stay where they are."""
    columns = max(len(row) for row in rows)
    figure, axes = new_figure(0.5 + inches * columns, inches * len(rows) + (0.4 if title else 0.1),
                              rows=len(rows), columns=columns)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            else:
                ax.set_axis_off()
            if r == 0 and column_labels is not None:
                ax.set_title(column_labels[c], fontsize=8)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
