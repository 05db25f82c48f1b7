"""The evaluations of a run, as the pictures and the report read them.

`read_evaluations` is the one place that finds them (today: the run's eval_<protocol>.json
files); point it at another source and every caller follows.
"""

from __future__ import annotations

import json
from pathlib import Path

from mimreg.errors import MimregError

# what an evaluation file says about its inputs rather than its results
CONTEXT_KEYS = {"checkpoint", "data", "recipe", "step", "epoch", "protocol", "train_images", "test_images",
                "singular_values", "dim", "epochs", "num_classes", "train_mask_ratio"}


def read_evaluations(run_dir: str | Path) -> dict[str, dict]:
    """protocol -> the payload written by `mimreg eval PROTOCOL` for the run in `run_dir`."""
    found = {}
    for path in sorted(Path(run_dir).glob("eval_*.json")):
        try:
            found[path.stem[len("eval_"):]] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MimregError(f"cannot read {path}: {err}; run the evaluation again to rewrite it") from None
    return found


def flat_metrics(payload: dict) -> dict[str, float]:
    """Every number of an evaluation's results, by path: {'cls/top1': 71.2, 'cls/1-shot/mean': ...}."""
    out: dict[str, float] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in CONTEXT_KEYS:
                    walk(value, f"{path}/{key}" if path else str(key))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[path] = float(node)

    walk(payload.get("results", {k: v for k, v in payload.items() if k not in CONTEXT_KEYS}), "")
    return out


def linear_top1(evaluations: dict[str, dict], pool: str = "cls") -> float | None:
    """The linear probe's top-1 (%) on `pool` features, when the run has one."""
    value = evaluations.get("linear", {}).get("results", {}).get(pool, {}).get("top1")
    return float(value) if value is not None else None
