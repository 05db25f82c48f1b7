"""Training curves: every logged term of a run against epochs, and runs side by side."""

from __future__ import annotations

import math

from mimreg.analysis._plotting import new_figure, save_png
from mimreg.errors import MimregError

NOT_CURVES = {"kind", "step", "epoch", "time"}
# the order panels come in: the method's own terms first, then by prefix
PREFIX_ORDER = ("", "reg/", "aux/", "weight/", "monitor/", "lr", "probe/", "knn/", "rankme/", "alpha_req/")
# drawn one after the other, thick to thin, so a line drawn later never hides one drawn earlier
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P")]
GAP_SPACINGS = 4  # a key missing for more than this many of its usual spacings draws as a gap
DECADES_FOR_LOG = 1.5  # a panel whose positive values span more than this many decades gets a log axis


def curve_keys(records: list[dict]) -> list[str]:
    """Every numeric key logged along training in `records` (those with a step), in panel order."""
    keys = {k for r in records if "step" in r and r.get("kind") != "start" for k, v in r.items()
            if k not in NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def rank(key: str):
        group = next((i for i, p in reversed(list(enumerate(PREFIX_ORDER))) if p and key.startswith(p)),
                     0 if "/" not in key else len(PREFIX_ORDER))
        return group, key != "loss", key

    return sorted(keys, key=rank)


def steps_per_epoch(records: list[dict]) -> int | None:
    starts = [r for r in records if r.get("kind") == "start" and r.get("steps_per_epoch")]
    return int(starts[-1]["steps_per_epoch"]) if starts else None


def series_of(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of `key`: from the per-interval "train" records when it is logged there,
    else from whichever records carry it (e.g. epoch-end evaluations). The x value is the number
    of epochs done, step / steps_per_epoch (the step count when that is not logged). Where the
    key is missing for much longer than its usual spacing (a monitored term while its regularizer
    is on), a NaN is put in: the line shows a gap, not a straight line across the window."""
    per_epoch = steps_per_epoch(records)
    chosen = [r for r in records if r.get("kind") == "train" and key in r] or \
             [r for r in records if key in r and "step" in r and r.get("kind") != "start"]
    xs = [r["step"] / per_epoch if per_epoch else r["step"] for r in chosen]
    ys = [float(r[key]) for r in chosen]
    spacing = sorted(b - a for a, b in zip(xs, xs[1:]))
    if len(spacing) < 2:
        return xs, ys
    usual = spacing[len(spacing) // 2]
    out_x, out_y = xs[:1], ys[:1]
    for a, b, y in zip(xs, xs[1:], ys[1:]):
        if b - a > GAP_SPACINGS * usual:
            out_x.append((a + b) / 2)
            out_y.append(math.nan)
        out_x.append(b)
        out_y.append(y)
    return out_x, out_y


def wants_log(values: list[float]) -> bool:
    """True when every value is positive and they span more than DECADES_FOR_LOG decades."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and math.log10(max(finite) / min(finite)) > DECADES_FOR_LOG


def draw_series(ax, series: dict, logy: bool | None = None) -> None:
    """One line per label of `series` (label -> (xs, ys)); every point marked in short series;
    a log y axis when `logy`, or when None and the values span decades. Integer x ticks."""
    from matplotlib.ticker import MaxNLocator

    values = [y for _, ys in series.values() for y in ys]
    logy = wants_log(values) if logy is None else logy
    for i, (label, (xs, ys)) in enumerate(series.items()):
        if len(xs) != len(ys):
            raise MimregError(f"series {label!r} has {len(xs)} x values but {len(ys)} y values; pass equal lengths")
        if logy:  # a log axis cannot show non-positive values (NaN stays: it draws as a gap)
            kept = [(x, y) for x, y in zip(xs, ys) if not y <= 0]
            xs, ys = [x for x, _ in kept], [y for _, y in kept]
        linestyle, marker = STYLES[i % len(STYLES)]
        width = max(0.8, 2.4 - 0.45 * i)
        # hollow markers of shrinking size: where lines coincide, the shapes nest instead of covering each other
        ax.plot(list(xs), list(ys), label=str(label), linestyle=linestyle, linewidth=width, alpha=0.85,
                marker=marker if len(xs) <= 40 else None, markersize=max(3.0, 7.5 - 1.3 * i),
                markerfacecolor="none", markeredgewidth=1.2)
    if logy:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def plot_curves(series: dict, path, title: str, xlabel: str, ylabel: str, logy: bool | None = None):
    """PNG with one line per label; `series` maps label -> (xs, ys) of equal length."""
    if not series:
        raise MimregError("plot_curves got no series; pass {label: (xs, ys)}")
    for label, pair in series.items():
        if len(pair) != 2:
            raise MimregError(f"series {label!r} must be an (xs, ys) pair")
    figure, ax = new_figure()
    draw_series(ax, {k: ([float(v) for v in xs], [float(v) for v in ys]) for k, (xs, ys) in series.items()}, logy)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return save_png(figure, path)


def plot_run_curves(runs: dict[str, list[dict]], path, keys: list[str] | None = None, title: str | None = None,
                    columns: int = 3):
    """PNG of small multiples: one panel per logged key (default: every key of every run), one
    line per run (label -> its metrics.jsonl records), against epochs."""
    return save_png(curves_figure(runs, keys, title, columns), path)


def curves_figure(runs: dict[str, list[dict]], keys: list[str] | None = None, title: str | None = None,
                  columns: int = 3):
    """The figure of `plot_run_curves`; its panels' titles are the keys."""
    keys = keys or curve_keys([r for records in runs.values() for r in records])
    if not keys:
        raise MimregError("no logged values to plot; the run has written no train records yet")
    columns = min(columns, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = new_figure(3.0 * columns, 2.1 * rows + (0.5 if len(runs) > 1 else 0.2), rows=rows,
                              columns=columns)
    epochs = all(steps_per_epoch(records) for records in runs.values())
    series = [{label: xy for label, records in runs.items() if (xy := series_of(records, key))[0]} for key in keys]
    xs = [x for panel in series for xy in panel.values() for x in xy[0]]
    pad = 0.03 * (max(xs) - min(xs) or 1)
    for i, ax in enumerate(axes.flat):
        if i >= len(keys):
            ax.set_axis_off()
            continue
        draw_series(ax, series[i])
        ax.set_xlim(min(0, min(xs)) - pad, max(xs) + pad)  # one x range: a regularizer's window lines up
        ax.set_title(keys[i], fontsize=9)
        ax.tick_params(labelsize=7)
        if i // columns == rows - 1 or i + columns >= len(keys):
            ax.set_xlabel("epoch" if epochs else "step", fontsize=8)
    if len(runs) > 1:
        legend = {}  # label -> line, from every panel (a run may not log every key)
        for ax in axes.flat:
            legend.update(zip(*reversed(ax.get_legend_handles_labels())))
        handles, labels = [legend[label] for label in runs if label in legend], [l for l in runs if l in legend]
        figure.legend(handles, labels, loc="outside upper center", ncols=min(len(runs), 6), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
