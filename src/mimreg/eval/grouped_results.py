"""`mimreg results --group-by`: every evaluation of groups of runs (the same settings, different
seeds) as mean, standard deviation and 95% interval over seeds, and each group's difference to a
baseline group with its interval, test and verdict (eval/statistics.py)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

from mimreg.errors import MimregError
from mimreg.eval.report import format_table, format_value
from mimreg.eval.results import FORMATS, comparison, value_style
from mimreg.eval.run_groups import Group, find_group, group_runs
from mimreg.eval.statistics import LEVEL, compare, summarize

NO_INTERVAL_NOTE = "one seed in a group: its mean is shown, but no interval can be given (n=1)"
FIELDS = ["metric", "group", "n", "mean", "std", "ci_low", "ci_high", "seeds", "baseline", "difference",
          "difference_ci_low", "difference_ci_high", "test", "n_pairs", "p_value", "verdict"]


def grouped_statistics(run_dirs: list[str | Path], group_by: list[str] | None = None,
                       baseline: str | None = None) -> dict:
    """{"group_by": axes, "baseline": label, "groups": [{"group", "values", "runs", "seeds"}],
    "statistics": one row of FIELDS per (metric, group) that has values}."""
    axes, groups = group_runs(run_dirs, group_by)
    base = find_group(groups, baseline)
    columns, rows = comparison(run_dirs)
    if not columns:
        raise MimregError(f"no evaluation results in {[str(r) for r in run_dirs]}; run `mimreg eval ...` first")
    by_run = {row["run"]: row for row in rows}
    statistics = []
    for metric in columns:
        values = {id(g): _values(g, by_run, metric) for g in groups}
        for group in groups:
            if values[id(group)]:
                statistics.append(_row(metric, group, base, values[id(group)], values[id(base)]))
    return {"group_by": axes, "baseline": base.label, "level": LEVEL,
            "groups": [{"group": g.label, "values": g.values, "runs": g.runs, "seeds": g.seeds} for g in groups],
            "statistics": statistics}


def _values(group: Group, by_run: dict, metric: str) -> dict:
    """{seed: value} of the group's runs that have `metric`; keyed by run folder when seeds cannot pair runs."""
    keys = group.seeds if group.paired else group.runs
    return {key: by_run[run][metric] for key, run in zip(keys, group.runs) if by_run[run].get(metric) is not None}


def _row(metric: str, group: Group, base: Group, values: dict, base_values: dict) -> dict:
    summary = summarize(list(values.values()))
    row = {"metric": metric, "group": group.label, **dataclasses.asdict(summary), "seeds": list(values),
           "baseline": base.label}
    if group is base or not base_values:
        return {**row, **dict.fromkeys(FIELDS[9:])}
    diff = compare(base_values, values)
    return {**row, "difference": diff.diff, "difference_ci_low": diff.ci_low, "difference_ci_high": diff.ci_high,
            "test": diff.test, "n_pairs": diff.n_pairs, "p_value": diff.p_value, "verdict": diff.verdict}


def grouped_table(run_dirs: list[str | Path], fmt: str = "markdown", group_by: list[str] | None = None,
                  baseline: str | None = None) -> str:
    """grouped_statistics as markdown (groups, means, differences), CSV (one row per metric and group)
    or JSON."""
    if fmt not in FORMATS:
        raise MimregError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    data = grouped_statistics(run_dirs, group_by, baseline)
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in data["statistics"]:
            writer.writerow({k: _csv(v) for k, v in row.items()})
        return buffer.getvalue()
    return _markdown(data)


def _csv(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _markdown(data: dict) -> str:
    stats = data["statistics"]
    parts = [f"groups by {','.join(data['group_by']) or '(nothing: one group)'}; baseline: {data['baseline'] or '(all runs)'}",
             format_table([{"group": g["group"], "n": len(g["runs"]), "seeds": _list(g["seeds"]),
                            "runs": _list(g["runs"])} for g in data["groups"]], ["group", "n", "seeds", "runs"]),
             f"\nmean over seeds, {LEVEL:.0%} interval (Student's t)",
             format_table([mean_cells(r) for r in stats], ["metric", "group", "n", "mean", "std", "interval"])]
    differences = [r for r in stats if r["verdict"] is not None]
    if differences:
        parts += [f"\ndifference to the baseline ({data['baseline']}), {LEVEL:.0%} interval",
                  format_table([difference_cells(r) for r in differences],
                               ["metric", "group", "difference", "interval", "test", "p", "verdict"])]
    if any(r["n"] == 1 for r in stats):
        parts.append("\n" + NO_INTERVAL_NOTE)
    return "\n".join(parts)


def _list(items: list) -> str:
    return ", ".join(str(i) for i in items)


def _number(value, metric: str) -> str:
    return format_value(value, value_style(metric))


def _interval(low, high, metric: str) -> str:
    return "none (one seed)" if low is None else f"[{_number(low, metric)}, {_number(high, metric)}]"


def mean_cells(row: dict) -> dict:
    """A statistics row as the table of means prints it (also the report page's)."""
    metric = row["metric"]
    return {"metric": metric, "group": row["group"], "n": row["n"], "mean": _number(row["mean"], metric),
            "std": _number(row["std"], metric), "interval": _interval(row["ci_low"], row["ci_high"], metric)}


def difference_cells(row: dict) -> dict:
    """A statistics row as the table of differences to the baseline prints it (also the report page's)."""
    metric, diff = row["metric"], row["difference"]
    test = row["test"] and (f"{row['test']}, {row['n_pairs']} pairs" if row["n_pairs"] else row["test"])
    return {"metric": metric, "group": row["group"], "difference": ("+" if diff >= 0 else "") + _number(diff, metric),
            "interval": _interval(row["difference_ci_low"], row["difference_ci_high"], metric),
            "test": test, "p": None if row["p_value"] is None else f"{row['p_value']:.2g}", "verdict": row["verdict"]}
