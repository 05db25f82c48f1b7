"""The evaluations of a run, as the pictures and the report read them: the records of
`mimreg.eval.results.load_results` (the same as `mimreg results`), grouped by a label."""

from __future__ import annotations

from pathlib import Path

import yaml

from mimreg.eval.results import load_results

# what an evaluation file says about its inputs rather than its results
CONTEXT_KEYS = {"checkpoint", "data", "recipe", "step", "epoch", "protocol", "train_images", "test_images",
                "singular_values", "dim", "epochs", "num_classes", "train_mask_ratio"}
# the variant each protocol runs when none is asked for: its results carry the plain protocol label
DEFAULT_VARIANTS = {"linear": "sweep"}


def read_evaluations(run_dir: str | Path, own_data: str | None = None) -> dict[str, dict]:
    """label -> {"results": {pool: result}, "data": ...}: "linear", "knn", ... for the default
    variant on the run's own dataset (`own_data`, default: config.yaml's data.name); "linear-mae",
    "knn imagefolder", "linear epochs50" otherwise."""
    run_dir = Path(run_dir)
    own_data = own_data or _config_data_name(run_dir / "config.yaml")
    found: dict[str, dict] = {}
    for record in load_results(run_dir):
        protocol, variant = record["protocol"], record.get("variant")
        label = protocol + (f"-{variant}" if variant and variant != DEFAULT_VARIANTS.get(protocol) else "")
        if record.get("data") not in (None, own_data):
            label += f" {record['data']}"
        label += "".join(f" {k}{v}" for k, v in sorted((record.get("options") or {}).items()) if v is not None)
        entry = found.setdefault(label, {"data": record.get("data"), "step": record.get("step"), "results": {}})
        entry["results"][record["pool"]] = record["result"]
    return found


def _config_data_name(config: Path) -> str | None:
    try:
        raw = yaml.safe_load(config.read_text()) if config.is_file() else None
    except yaml.YAMLError:
        return None  # the caller reports the file (or stands in the checkpoint's config)
    data = raw.get("data") if isinstance(raw, dict) else None
    return data.get("name") if isinstance(data, dict) else None


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
