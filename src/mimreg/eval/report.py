"""Writing evaluation results: atomic JSON files and plain-text/markdown tables."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from pathlib import Path

from mimreg.errors import MimregError
from mimreg.io import atomic_write

# A column holds accuracies in percent when its name contains one of these.
PERCENT_COLUMN_MARKERS = ("top1", "top5", "acc", "knn", "lowshot", "pct", "per_class", "%")
MISSING = "-"


def _to_json_compatible(value):
    # numpy scalars/arrays and torch tensors all expose tolist().
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path, payload) -> Path:
    """Write `payload` as indented JSON to `path` atomically; create parent folders.

    The file is written to a temporary sibling and moved into place with os.replace, so a
    reader never sees a half-written file. Tensors, numpy values and Paths are converted.
    """
    path = Path(path)
    try:
        text = json.dumps(payload, indent=2, default=_to_json_compatible) + "\n"
    except (TypeError, ValueError) as exc:
        raise MimregError(f"cannot write {path} as JSON: {exc}; pass plain numbers, strings, lists and dicts") from exc
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def is_percent_column(name: str) -> bool:
    """True when `name` contains one of PERCENT_COLUMN_MARKERS (case-insensitive)."""
    lowered = name.lower()
    return any(marker in lowered for marker in PERCENT_COLUMN_MARKERS)


def _format_number(value: float, percent: bool) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.1f}" if percent else f"{value:.3g}"


def format_value(value, column: str, formats: Mapping[str, str | Callable] | None = None) -> str:
    """Render one cell (see format_table for the rules)."""
    if value is None:
        return MISSING
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # 0-d tensors and numpy scalars
    custom = (formats or {}).get(column)
    if callable(custom):
        return str(custom(value))
    if isinstance(value, Mapping) and "mean" in value and "std" in value:
        mean = format_value(value["mean"], column, formats)
        std = format_value(value["std"], column, formats)
        return f"{mean} ± {std}"
    if custom is not None:
        return format(value, custom)
    if isinstance(value, bool) or isinstance(value, Integral):
        return str(value)
    if isinstance(value, Real):
        return _format_number(float(value), is_percent_column(column))
    return str(value)


def _is_number(value) -> bool:
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    return isinstance(value, Real) and not isinstance(value, bool)


def format_table(
    rows: list[dict], columns: list[str], formats: Mapping[str, str | Callable] | None = None
) -> str:
    """Markdown pipe table of `rows` restricted to `columns`, padded so it also reads as plain text.

    Cell rules: None or a missing key -> "-"; ints and bools as-is; floats with 1 decimal in
    percent columns (name contains one of PERCENT_COLUMN_MARKERS: top1, top5, acc, knn, lowshot, pct,
    per_class, %) and 3 significant digits elsewhere; a {"mean", "std"} dict -> "mean ± std";
    strings as-is. `formats` overrides a column with a format spec (".2f") or a callable.
    Numeric columns are right-aligned. "|" inside a cell is escaped.
    """
    if not columns:
        raise MimregError("format_table needs at least one column name")
    cells = [
        [format_value(row.get(col), col, formats).replace("|", "\\|") for col in columns] for row in rows
    ]
    header = [col.replace("|", "\\|") for col in columns]
    numeric = [bool(rows) and all(_is_number(row.get(col)) or row.get(col) is None for row in rows) for col in columns]
    widths = [max([3, len(header[j])] + [len(line[j]) for line in cells]) for j in range(len(columns))]

    def render(line: list[str]) -> str:
        padded = [
            line[j].rjust(widths[j]) if numeric[j] else line[j].ljust(widths[j]) for j in range(len(columns))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([render(header), rule] + [render(line) for line in cells])
