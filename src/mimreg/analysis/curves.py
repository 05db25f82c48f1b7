"""Generic line plots, e.g. loss curves of several runs."""

from __future__ import annotations

from mimreg.analysis._plotting import new_figure, save_png
from mimreg.errors import MimregError


def plot_curves(series: dict, path, title: str, xlabel: str, ylabel: str, logy: bool = False):
    """PNG with one line per label; `series` maps label -> (xs, ys) of equal length.

    With logy=True, non-positive y values are not drawn (a log axis cannot show them).
    """
    if not series:
        raise MimregError("plot_curves got no series; pass {label: (xs, ys)}")
    figure, axes = new_figure()
    for label, pair in series.items():
        if len(pair) != 2:
            raise MimregError(f"series {label!r} must be an (xs, ys) pair")
        xs, ys = ([float(v) for v in seq] for seq in pair)
        if len(xs) != len(ys):
            raise MimregError(f"series {label!r} has {len(xs)} x values but {len(ys)} y values; pass equal lengths")
        if logy:
            kept = [(x, y) for x, y in zip(xs, ys) if not y <= 0]  # NaN stays: it draws as a gap
            xs, ys = [x for x, _ in kept], [y for _, y in kept]
        # A single point would be invisible as a line, so mark every point in short series.
        marker = "o" if len(xs) <= 20 else None
        axes.plot(list(xs), list(ys), label=str(label), marker=marker, markersize=3, linewidth=1.5)
    if logy:
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend()
    return save_png(figure, path)
