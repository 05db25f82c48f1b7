"""The report page's "Seeds and intervals" section: runs grouped by their settings (the seed aside,
eval/grouped_results.py), each metric as one point per seed with the group's mean and 95% interval,
each group's difference to the baseline group (table and per-seed figure), and each group's
training curves as the mean over its seeds with a min..max band."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mimreg.analysis._plotting import new_figure, save_png
from mimreg.analysis.curves import curve_keys, steps_per_epoch, wants_log
from mimreg.engine.metrics import read_metrics
from mimreg.eval.grouped_results import NO_INTERVAL_NOTE, difference_cells, grouped_statistics, mean_cells
from mimreg.eval.results import comparison
from mimreg.eval.run_groups import find_group, group_runs, text
from mimreg.eval.statistics import LEVEL

# figures by the kind of metric (the first word of a column: "linear-sweep", "knn10_euclidean", "erank")
FAMILIES = {"linear": "Linear probe top-1 (%)", "finetune": "Fine-tuning top-1 (%)", "knn": "kNN top-1 (%)",
            "lowshot": "Low-shot top-1 (%)", "erank": "Effective rank",
            "cos": "Cosine similarity to the unmasked features",
            "rankme": "RankMe, last logged in pretraining", "alpha": "alpha-ReQ, last logged in pretraining"}
PANEL_COLUMNS = 4
MARKERS = "osD^vP*Xph"
JITTER = 0.22  # half the width over which a group's seeds are spread, in group spacings
BAND_CAPTION = "band: min..max over the group's seeds"
MARKED_POINTS = 40  # curves with at most this many steps mark each one


def seed_section(run_dirs: list[str | Path], folder: Path, figure: Callable, esc: Callable,
                 group_by: list[str] | None = None, baseline: str | None = None) -> str:
    """The section's HTML; its PNGs are drawn into `folder` and embedded by `figure(png, caption, wide)`."""
    run_dirs = [str(r) for r in run_dirs]
    axes, groups = group_runs(run_dirs, group_by)
    columns, rows = comparison(run_dirs)
    data = grouped_statistics(run_dirs, group_by, baseline) if columns else None
    names = {run: Path(run).name for run in run_dirs}
    base = find_group(groups, baseline).label  # checked here too: without evaluations there are no statistics
    parts = [f'<section id="seeds"><h2>Seeds and intervals</h2>{_groups_table(axes, groups, names, base, esc)}']
    if data is None:
        parts.append('<p class="note">No evaluation results yet: <code>mimreg eval ...</code> on the runs '
                     "(or a study file's <code>evaluations</code>).</p>")
    else:
        parts.append(_metric_parts(data, {row["run"]: row for row in rows}, folder, figure, esc))
    parts.append(_curve_part(groups, folder, figure))
    if any(len(g.runs) == 1 for g in groups):
        parts.append(f'<p class="note">{esc(NO_INTERVAL_NOTE)}; such a group shows its points and mean only.</p>')
    return "".join(parts) + "</section>"


def short_label(values: dict) -> str:
    """A group's tick label: its values alone ("digits/u-mae, 0.03"); the tables give key=value."""
    return ", ".join(text(v) for v in values.values()) or "all runs"


def metric_family(metric: str) -> str:
    """"linear-sweep cls digits" -> "linear"; "knn10_euclidean cls digits" -> "knn"."""
    return re.match(r"[a-z]*", metric).group(0)


def seed_values(data: dict, by_run: dict, metric: str) -> list[dict]:
    """Per group (in data's order): {seed: value} of its runs that have `metric`, keyed by run folder
    where a seed is repeated (as grouped_statistics keys them)."""
    out = []
    for group in data["groups"]:
        seeds = group["seeds"]
        keys = seeds if None not in seeds and len(set(seeds)) == len(seeds) else group["runs"]
        out.append({key: by_run[run][metric] for key, run in zip(keys, group["runs"])
                    if by_run[run].get(metric) is not None})
    return out


# ---------------------------------------------------------------- HTML parts
def _groups_table(axes, groups, names, baseline: str, esc) -> str:
    body = "".join(f'<tr><td class="text">{esc(g.label or "(all runs)")}</td><td>{len(g.runs)}</td>'
                   f'<td class="text">{esc(", ".join(map(str, g.seeds)))}</td>'
                   f'<td class="text">{esc(", ".join(names[r] for r in g.runs))}</td></tr>' for g in groups)
    return (f'<p class="note">Runs grouped by {esc(", ".join(axes) or "nothing (one group)")}; the runs of a group '
            f"differ only by their seed. Baseline: {esc(baseline or '(all runs)')}. Intervals: {LEVEL:.0%}, "
            "Student's t, as <code>mimreg results --group-by</code> prints them.</p>"
            '<div class="table-wrap"><table class="groups"><thead><tr><th class="text">group</th><th>n</th>'
            f'<th class="text">seeds</th><th class="text">runs</th></tr></thead><tbody>{body}</tbody></table></div>')


def _metric_parts(data: dict, by_run: dict, folder: Path, figure, esc) -> str:
    order = list(FAMILIES)
    rank = {m: (order.index(f) if (f := metric_family(m)) in order else len(order), f) for m in
            (row["metric"] for row in data["statistics"])}
    data = {**data, "statistics": sorted(data["statistics"], key=lambda row: rank[row["metric"]])}  # figure order
    metrics = list(dict.fromkeys(row["metric"] for row in data["statistics"]))
    families = list(dict.fromkeys(map(metric_family, metrics)))
    figures = []
    for family in families:
        chosen = [m for m in metrics if metric_family(m) == family]
        png = plot_seed_points(data, by_run, chosen, FAMILIES.get(family, family), folder / f"seeds-{family}.png")
        figures.append(figure(png, f"{FAMILIES.get(family, family)}: one point per seed (the same seed has the same "
                                   f"colour and marker in every group, and a grey line joins its points), the "
                                   f"group's mean (black bar) and its {LEVEL:.0%} interval", wide=True))
    means = _table([mean_cells(r) for r in data["statistics"]],
                   ["metric", "group", "n", "mean", "std", "interval"], esc)
    parts = [f'<h3>Mean over seeds</h3><div class="grid">{"".join(figures)}</div>{means}']
    differences = [r for r in data["statistics"] if r["verdict"] is not None]
    if differences:
        png = plot_differences(data, by_run, metrics, folder / "seeds-differences.png")
        parts.append(f"<h3>Difference to the baseline ({esc(data['baseline'])})</h3>"
                     + _table([difference_cells(r) for r in differences],
                              ["metric", "group", "difference", "interval", "test", "p", "verdict"], esc)
                     + figure(png, "Each group minus the baseline: one point per seed both ran (paired t-test; none "
                                   "where the groups are compared unpaired), the mean difference (black bar) and its "
                                   f"{LEVEL:.0%} interval; the dashed line is no difference", wide=True))
    return "".join(parts)


def _table(rows: list[dict], columns: list[str], esc) -> str:
    words = {c: ' class="text"' if c in ("metric", "group", "test", "verdict") else "" for c in columns}
    head = "".join(f"<th{words[c]}>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td{words[c]}>{esc("–" if row.get(c) is None else row[c])}</td>'
                                    for c in columns) + "</tr>" for row in rows)
    return (f'<div class="table-wrap"><table class="seeds"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _curve_part(groups, folder: Path, figure) -> str:
    records = {short_label(g.values): [read_metrics(Path(run) / "metrics.jsonl") for run in g.runs] for g in groups}
    keys = shared_train_keys(list(records.values()))
    if not keys:
        return '<h3>Training curves per group</h3><p class="note">No training records every run logged.</p>'
    png = plot_group_curves(records, keys, folder / "seeds-curves.png")
    return ("<h3>Training curves per group</h3>"
            + figure(png, f"Each group's mean over its seeds (line), {BAND_CAPTION}, at the steps every seed of the "
                          "group logged (train records of metrics.jsonl)", wide=True))


# ---------------------------------------------------------------- figures
def _panels(count: int, title: str | None = None):
    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    fig, axes = new_figure(3.4 * columns, 2.8 * rows + 0.5, rows=rows, columns=columns)
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, list(axes.flat[:count])


def _seed_styles(data: dict) -> dict:
    seeds = list(dict.fromkeys(s for g in data["groups"] for s in g["seeds"]))
    colours = [f"C{i % 10}" for i in range(len(seeds))]
    return {s: (c, MARKERS[i % len(MARKERS)], (i / max(len(seeds) - 1, 1) - 0.5) * 2 * JITTER)
            for i, (s, c) in enumerate(zip(seeds, colours))}


def _group_ticks(ax, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20 if max(map(len, labels)) > 12 else 0,
                  ha="right" if max(map(len, labels)) > 12 else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)


def _mean_and_interval(ax, x: float, mean: float, low, high) -> None:
    ax.hlines(mean, x - 0.3, x + 0.3, colors="black", linewidth=2.2, zorder=3)
    if low is not None:
        ax.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="none", ecolor="black", capsize=6,
                    linewidth=1.2, zorder=3)


def plot_seed_points(data: dict, by_run: dict, metrics: list[str], title: str, path) -> Path:
    """One panel per metric, one column per group: its seeds as points, its mean and interval."""
    styles = _seed_styles(data)
    stats = {(r["metric"], r["group"]): r for r in data["statistics"]}
    labels = [short_label(g["values"]) for g in data["groups"]]
    fig, axes = _panels(len(metrics), title)
    for ax, metric in zip(axes, metrics):
        values = seed_values(data, by_run, metric)
        for seed, (colour, marker, dx) in styles.items():  # a seed's points joined across groups
            points = [(i + dx, v[seed]) for i, v in enumerate(values) if seed in v]
            if len(points) > 1:
                ax.plot(*zip(*points), color="0.75", linewidth=0.8, zorder=1)
        for i, (group, group_values) in enumerate(zip(data["groups"], values)):
            for seed, value in group_values.items():
                colour, marker, dx = styles.get(seed, ("0.4", "o", 0.0))
                ax.plot([i + dx], [value], marker=marker, color=colour, linestyle="none", markersize=6, zorder=2)
            row = stats.get((metric, group["group"]))
            if row:
                _mean_and_interval(ax, i, row["mean"], row["ci_low"], row["ci_high"])
        ax.set_title(metric, fontsize=8)
        _group_ticks(ax, labels)
    _seed_legend(fig, styles)
    return save_png(fig, path)


def _seed_legend(fig, styles: dict) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker=m, linestyle="none") for c, m, _ in styles.values()]
    fig.legend(handles, [f"seed {s}" for s in styles], loc="outside lower center", ncols=min(len(styles), 8),
               fontsize=7, frameon=False)


def plot_differences(data: dict, by_run: dict, metrics: list[str], path) -> Path:
    """One panel per metric, one column per group but the baseline: the per-seed differences (paired
    groups), the mean difference and its interval, a line at zero."""
    styles = _seed_styles(data)
    index = {g["group"]: i for i, g in enumerate(data["groups"])}
    base = index[data["baseline"]]
    others = [g for g in data["groups"] if g["group"] != data["baseline"]]
    stats = {(r["metric"], r["group"]): r for r in data["statistics"] if r["verdict"] is not None}
    fig, axes = _panels(len(metrics), f"Difference to {data['baseline']}")
    for ax, metric in zip(axes, metrics):
        values = seed_values(data, by_run, metric)
        ax.axhline(0, color="0.4", linestyle="--", linewidth=1)
        for x, group in enumerate(others):
            row = stats.get((metric, group["group"]))
            if not row:
                continue
            if row["n_pairs"]:
                ours, theirs = values[index[group["group"]]], values[base]
                for seed in (s for s in ours if s in theirs):
                    colour, marker, dx = styles[seed]
                    ax.plot([x + dx], [ours[seed] - theirs[seed]], marker=marker, color=colour, linestyle="none",
                            markersize=5, zorder=2)
            _mean_and_interval(ax, x, row["difference"], row["difference_ci_low"], row["difference_ci_high"])
        ax.set_title(metric, fontsize=8)
        _group_ticks(ax, [short_label(g["values"]) for g in others])
    _seed_legend(fig, styles)
    return save_png(fig, path)


def shared_train_keys(groups: list[list[list[dict]]]) -> list[str]:
    """The keys of train records that every run of at least one group logs, in curve panel order
    (a regularizer's term: the groups that have it)."""
    trains = [[[r for r in records if r.get("kind") == "train"] for records in runs] for runs in groups]
    logged = [[set(curve_keys(t)) for t in runs] for runs in trains]
    every = curve_keys([r for runs in trains for t in runs for r in t])
    return [k for k in every if any(runs and all(k in s for s in runs) for runs in logged)]


def aligned(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values of shape (steps, runs)): `key` of the train records at the steps every run logged it."""
    by_step = [{r["step"]: float(r[key]) for r in records if r.get("kind") == "train" and key in r and "step" in r}
               for records in runs]
    steps = sorted(set.intersection(*(set(s) for s in by_step))) if by_step else []
    return np.array(steps, dtype=float), np.array([[s[step] for s in by_step] for step in steps], dtype=float)


def epoch_scale(runs: list[list[dict]]) -> int | None:
    """The steps per epoch all of a group's runs share (their start records), else None (x in steps)."""
    found = {steps_per_epoch(records) for records in runs}
    return found.pop() if len(found) == 1 and None not in found else None


def plot_group_curves(groups: dict[str, list[list[dict]]], keys: list[str], path) -> Path:
    """One panel per key, one line per group (label -> its runs' records): the mean over seeds
    at each step every seed logged, and a min..max band; against epochs when every group knows its
    steps per epoch (groups of different batch sizes line up), else steps."""
    from matplotlib.ticker import MaxNLocator

    scales = {label: epoch_scale(runs) for label, runs in groups.items()}
    epochs = all(scales.values())
    fig, axes = _panels(len(keys))
    for ax, key in zip(axes, keys):
        curves = {label: aligned(runs, key) for label, runs in groups.items()}
        for i, (label, (steps, values)) in enumerate(curves.items()):
            if not len(steps):
                continue
            colour, xs = f"C{i % 10}", steps / scales[label] if epochs else steps
            ax.plot(xs, values.mean(axis=1), color=colour, linewidth=1.6, label=label,  # a term logged at a
                    marker="o" if len(xs) <= MARKED_POINTS else None, markersize=3)  # few steps stays visible
            if values.shape[1] > 1:
                ax.fill_between(xs, values.min(axis=1), values.max(axis=1), color=colour, alpha=0.2, linewidth=0)
        if wants_log([float(v) for _, values in curves.values() for v in values.flat]):
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch" if epochs else "step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    legend = {}  # label -> line, from every panel (a group may not log every key)
    for ax in axes:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    labels = [label for label in groups if label in legend]
    fig.legend([legend[label] for label in labels], labels, loc="outside upper center", ncols=min(len(labels), 4) or 1,
               fontsize=8, frameon=False)
    return save_png(fig, path)
