"""Evaluation results of a run: one file per evaluation, named by what defines it, and one table of
every evaluation of several runs.

A result lives in RUN/evals/<protocol>[-<variant>]_<data>_<pool>[_<option><value>...].json, so an
evaluation on another dataset, with another protocol variant, pool or option never replaces
another one; repeating the same evaluation replaces it with the newer numbers. An evaluation of a
checkpoint that is not the run's latest carries `_step<N>` in its name.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from mimreg.engine.metrics import read_metrics
from mimreg.engine.rep_monitor import PREFIXES as MONITOR_PREFIXES, last_values
from mimreg.errors import MimregError
from mimreg.io import atomic_write
from mimreg.eval.report import format_table, format_value, write_json

RESULTS_DIR = "evals"
HEAD_SUFFIX = ".head.safetensors"
FORMATS = ("markdown", "csv", "json")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


def _safe(text) -> str:
    return _UNSAFE.sub("-", str(text)).strip("-") or "x"


def result_stem(protocol: str, variant: str | None, data: str, pool: str, options: dict) -> str:
    """The file stem of an evaluation; `options` holds only the settings that differ from the defaults."""
    name = protocol + (f"-{variant}" if variant else "")
    parts = [name, data, pool] + [f"{key}{value}" for key, value in sorted(options.items()) if value is not None]
    return "_".join(_safe(p) for p in parts)


def headline(protocol: str, variant: str | None, result: dict) -> dict[str, float]:
    """The numbers of one result that go into the comparison table, by column name."""
    name = protocol + (f"-{variant}" if variant else "")
    if protocol in ("linear", "finetune"):
        return {name: result["top1"]}
    if protocol == "knn":
        return dict(result)
    if protocol == "lowshot":
        return {f"lowshot-{key}": value["mean"] for key, value in result.items()}
    if protocol == "erank":
        return {"erank": result["effective_rank"]}
    if protocol == "robustness":
        out = {f"cos-mask{ratio}": value["mean"] for ratio, value in result["cosine_similarity"].items()}
        out.update({f"lowshot-masked-{k}": v["mean"] for k, v in result["lowshot_masked_train"].items()})
        return out
    raise MimregError(f"no headline numbers for protocol {protocol!r}")


def save_result(run_dir: str | Path, meta: dict, *, protocol: str, variant: str | None, pool: str,
                options: dict, result: dict) -> Path:
    """Write one evaluation (meta: checkpoint, step, epoch, recipe, data, image counts, latest)."""
    options = {k: v for k, v in options.items() if v is not None}
    if not meta.get("latest", True):
        options["step"] = meta.get("step")
    stem = result_stem(protocol, variant, meta["data"], pool, options)
    record = {**{k: v for k, v in meta.items() if k != "latest"}, "protocol": protocol, "variant": variant,
              "pool": pool, "options": options, "result": result, "headline": headline(protocol, variant, result)}
    return write_json(Path(run_dir) / RESULTS_DIR / f"{stem}.json", record)


def head_path(result_file: str | Path) -> Path:
    """Where a linear evaluation's head lies: beside its result, RUN/evals/<stem>.head.safetensors."""
    return Path(result_file).with_suffix(HEAD_SUFFIX)


def save_head(result_file: str | Path, head: dict) -> Path:
    """The probe's head on the raw pooled features (weight (C, D), bias (C,)), as safetensors: what
    `mimreg export --format hf` folds into timm's classifier."""
    from safetensors.torch import save

    data = save({k: v.detach().float().contiguous().cpu() for k, v in head.items()})
    return atomic_write(head_path(result_file), lambda handle: handle.write(data))


def load_head(result_file: str | Path) -> dict | None:
    """The head saved beside a linear evaluation, or None (evaluations before heads were kept)."""
    from safetensors.torch import load_file

    path = head_path(result_file)
    return load_file(str(path)) if path.is_file() else None


def run_folders(paths: list[str | Path]) -> list[Path]:
    """The run folders `paths` name: each path itself, or for a study folder (`mimreg study --out`,
    holding runs/<point>/ with their config.yaml) each of its runs, sorted by name."""
    found = []
    for path in map(Path, paths):
        runs = sorted(p.parent for p in path.glob("runs/*/config.yaml")) if not (path / "config.yaml").exists() else []
        found += runs or [path]
    return found


def load_results(run_dir: str | Path) -> list[dict]:
    """Every evaluation of a run, each with its `file`: first those written by mimreg before results
    were kept apart (RUN/eval_<protocol>.json), then RUN/evals/*.json sorted by name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MimregError(f"run folder {run_dir} does not exist; pass the folder a pretraining wrote")
    records = []
    for path in sorted(run_dir.glob("eval_*.json")):  # first, so that a newer result of the same kind wins
        records += _legacy_records(_read(path), path)
    for path in sorted((run_dir / RESULTS_DIR).glob("*.json")):
        records.append({**_read(path), "file": str(path)})
    return records


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MimregError(f"cannot read evaluation result {path}: {err}; delete it or evaluate again") from None


def _legacy_records(payload: dict, path: Path) -> list[dict]:
    protocol = payload.get("protocol", path.stem.removeprefix("eval_"))
    if protocol == "robustness":
        result = {k: payload[k] for k in ("cosine_similarity", "lowshot_masked_train")}
        per_pool = {"cls": result}
    else:
        per_pool = payload.get("results", {})
    records = []
    for pool, result in per_pool.items():
        variant = result.get("protocol", "magma") if protocol == "linear" else None
        records.append({**{k: v for k, v in payload.items() if k != "results"}, "protocol": protocol, "variant": variant,
                        "pool": pool, "options": {}, "result": result, "file": str(path),
                        "headline": headline(protocol, variant, result)})
    return records


def column_name(record: dict, metric: str) -> str:
    options = " ".join(f"{k}={v}" for k, v in sorted(record.get("options", {}).items()) if v is not None)
    return " ".join(p for p in (metric, record["pool"], record["data"], options) if p)


def comparison(run_dirs: list[str | Path]) -> tuple[list[str], list[dict]]:
    """Columns (sorted) and one row per run: {"run", "recipe", "step" (the newest evaluated),
    column: value, "steps": {column: the step of the checkpoint that value was measured on}}. Besides
    the evaluations, the last RankMe / alpha-ReQ the run logged (columns `rankme/cls`, ...)."""
    if not run_dirs:
        raise MimregError("pass at least one run folder")
    rows, columns = [], set()
    for run_dir in run_dirs:
        records = load_results(run_dir)
        steps = [r["step"] for r in records if r.get("step") is not None]
        recipes = [r["recipe"] for r in records if r.get("recipe")]
        row = {"run": str(run_dir), "recipe": recipes[0] if recipes else None, "step": max(steps) if steps else None,
               "steps": {}}
        for record in records:
            for metric, value in record["headline"].items():
                name = column_name(record, metric)
                row[name] = value
                row["steps"][name] = record.get("step")
                columns.add(name)
        # the representation monitor's last values, logged during pretraining (engine/rep_monitor.py)
        for name, (step, value) in last_values(read_metrics(Path(run_dir) / "metrics.jsonl")).items():
            row[name], row["steps"][name] = value, step
            columns.add(name)
        rows.append(row)
    return sorted(columns), rows


def stale_step(row: dict, column: str) -> int | None:
    """The step of a value measured on an older checkpoint than the row's newest evaluation, else None."""
    step = row["steps"].get(column)
    return step if step is not None and row["step"] is not None and step < row["step"] else None


def _difference(row: dict, first: dict, column: str) -> float | None:
    if row is first or row.get(column) is None or first.get(column) is None:
        return None
    return row[column] - first[column]


def results_table(run_dirs: list[str | Path], fmt: str = "markdown") -> str:
    """Every evaluation of every run as one table (rows runs, columns metric/pool/dataset[/options]),
    each value of a later run followed by its difference to the first run. A run's "step" is its
    newest evaluated checkpoint; every value carries its own step (csv: a "COLUMN step" column,
    json: "steps"), and in markdown a value of an older checkpoint is marked "[step N]"."""
    if fmt not in FORMATS:
        raise MimregError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    columns, rows = comparison(run_dirs)
    if not columns:
        raise MimregError(f"no evaluation results in {[str(r) for r in run_dirs]}; run `mimreg eval ...` first")
    first = rows[0]
    diffs = [{c: _difference(row, first, c) for c in columns} for row in rows]
    if fmt == "json":
        return json.dumps({"columns": columns, "baseline": first["run"], "runs": [
            {"run": r["run"], "recipe": r["recipe"], "step": r["step"], "values": {c: r.get(c) for c in columns},
             "steps": {c: r["steps"].get(c) for c in columns}, "difference": d} for r, d in zip(rows, diffs)]},
            indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["run", "recipe", "step"] + [h for c in columns for h in (c, f"{c} diff", f"{c} step")])
        for row, diff in zip(rows, diffs):
            writer.writerow([row["run"], row["recipe"], row["step"]] + [
                v for c in columns for v in (_csv(row.get(c)), _csv(diff[c]), _int(row["steps"].get(c)))])
        return buffer.getvalue()
    cells = [{"run": r["run"], "recipe": r["recipe"], "step": r["step"],
              **{c: _stale(_cell(r.get(c), d[c], c), stale_step(r, c)) for c in columns}} for r, d in zip(rows, diffs)]
    return format_table(cells, ["run", "recipe", "step"] + columns)


def _csv(value) -> str:
    return "" if value is None else f"{value:.6g}"


def _int(value) -> str:
    return "" if value is None else str(value)


def _stale(text: str | None, step: int | None) -> str | None:
    return text if text is None or step is None else f"{text} [step {step}]"


def _cell(value, diff, column: str) -> str | None:
    if value is None:
        return None
    style = value_style(column)
    text = format_value(value, style)
    return text if diff is None else f"{text} ({'+' if diff >= 0 else ''}{format_value(diff, style)})"


def value_style(column: str) -> str:
    """The format_value column style of a headline column: accuracies in percent with one decimal;
    effective ranks, RankMe, alpha-ReQ and cosines with 3 significant digits."""
    return column if column.startswith(("erank", "cos-", *MONITOR_PREFIXES)) else "top1"
