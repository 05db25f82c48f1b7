"""A study's dry run: how long it will take, from one measured first epoch per distinct setting.

A first epoch is read from a run folder of the study when it trained one; otherwise it is measured
here, in a scratch folder: one step (which logs the steps per
epoch), then a resume that finishes the epoch. A run is estimated at epochs x that first epoch
(which includes building the data and model, so the estimate leans high); evaluations are not in it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mimreg.study.spec import Point, Study


@dataclass
class EpochCost:
    label: str  # the first point of the setting, without its seed
    seconds: float  # its first epoch, wall time
    measured: str  # "run folder" or "measured now"


def first_epoch_seconds(run_dir: Path) -> float | None:
    """Wall seconds of the first epoch of a run that was not resumed before it, from metrics.jsonl."""
    from mimreg.engine.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
    starts = [r for r in records if r.get("kind") == "start"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if len(starts) != 1 or not epochs:  # a resume restarts the clock: the time would not be the epoch's
        return None
    return float(epochs[0]["time"]) - float(starts[0].get("time", 0.0))


def measure_first_epoch(point: Point, device: str) -> float:
    """Train `point` for one epoch in a scratch folder; its wall seconds (two set-ups included)."""
    import contextlib
    import io
    import time

    from mimreg.config import load_config
    from mimreg.engine.loop import pretrain
    from mimreg.engine.metrics import read_metrics

    extra = [f"train.device={device}", "train.progress=false", "train.knn_every=0"]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mimreg-estimate-") as scratch, \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pretrain(load_config(point.recipe, [*point.overrides, *extra, "train.halt_after_steps=1"]), scratch)
        start = next(r for r in read_metrics(Path(scratch) / "metrics.jsonl") if r.get("kind") == "start")
        steps = int(start["steps_per_epoch"])
        if steps > 1:
            pretrain(load_config(point.recipe, [*point.overrides, *extra, f"train.halt_after_steps={steps}"]),
                     scratch, resume=True)
    return time.perf_counter() - began


def estimate(study: Study, study_dir: Path, todo: list[Point], device: str, echo=print) -> float:
    """Seconds of pretraining left in `todo`: epochs x the first epoch of each setting (the points
    that differ only by seed or axis values share one: those are taken not to change an epoch's cost)."""
    from mimreg.config import load_config
    from mimreg.study.point import run_dir_of

    costs: dict[tuple, EpochCost] = {}
    total = 0.0
    for point in todo:
        if point.cost_key not in costs:
            known = [first_epoch_seconds(run_dir_of(study_dir, p)) for p in study.points if p.cost_key == point.cost_key]
            known = [s for s in known if s is not None]
            cost = (EpochCost(point.group, known[0], "run folder") if known else
                    EpochCost(point.group, measure_first_epoch(point, device), "measured now"))
            echo(f"  first epoch of {cost.label} (and its axis values): {cost.seconds:.1f} s ({cost.measured})")
            costs[point.cost_key] = cost
        total += costs[point.cost_key].seconds * load_config(point.recipe, list(point.overrides)).train.epochs
    return total
