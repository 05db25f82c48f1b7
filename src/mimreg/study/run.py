"""`mimreg study STUDY.yaml`: run a study's grid into a folder, locally or as a SLURM job array.

Layout: STUDY_DIR/study.yaml (the file as last run), runs/<point>/ (each a pretraining run folder,
with its evaluations in evals/), status/<point>.json (the ledger), logs/<point>.log.
Re-running the command skips what is done, resumes what was interrupted, and retries what failed.
"""

from __future__ import annotations

from pathlib import Path

from mimreg.errors import ConfigError
from mimreg.io import atomic_write
from mimreg.study.ledger import read_status, shown_state
from mimreg.study.spec import Point, Study


def pending_points(study: Study, study_dir: Path) -> tuple[list[Point], list[Point]]:
    """The points with work left, and those whose pretraining and evaluations are all done."""
    wanted = {e.key for e in study.evaluations}
    todo, finished = [], []
    for point in study.points:
        status = read_status(study_dir, point.name)
        if status.overrides is not None and status.overrides != list(point.overrides):
            raise ConfigError(f"study point {point.name} ran in {study_dir} with {status.overrides}; this study "
                              f"gives it {list(point.overrides)}: give the same settings (--set), or a new --out")
        done = status.pretrained and wanted <= set(status.evaluations)
        (finished if done else todo).append(point)
    return todo, finished


def record_study_file(study: Study, study_dir: Path, echo=print) -> None:
    """Keep the study file with its results; say so when it changed since the last run."""
    kept = study_dir / "study.yaml"
    if kept.is_file() and kept.read_text() != study.text:
        echo(f"{study.path} differs from the one this study last ran ({kept}): new points run, finished ones are kept")
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(kept, lambda handle: handle.write(study.text), binary=False)


def grid_lines(study: Study, study_dir: Path) -> list[str]:
    """One line per point: its state, name, recipe, axes and seed."""
    from mimreg.eval.report import format_table

    rows = []
    for point in study.points:
        status = read_status(study_dir, point.name)
        state = shown_state(study_dir, point.name, status)
        rows.append({"point": point.name, "recipe": point.recipe, **dict(point.axes), "seed": point.seed,
                     "state": state})
    axes = list(dict.fromkeys(key for point in study.points for key, _ in point.axes))
    columns = ["point", "recipe", *axes, "seed", "state"]
    return format_table(rows, columns).splitlines()


def summary_lines(outcomes, finished: list[Point]) -> list[str]:
    """What the run did: counts by result, then each point that did not finish, with why."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    parts = [f"{n} {result}" for result, n in sorted(counts.items())]
    if finished:
        parts.append(f"{len(finished)} already finished (skipped)")
    lines = ["study: " + ", ".join(parts)]
    lines += [f"  {o.result}: {o.point}: {o.detail}" for o in outcomes if o.result not in ("done",)]
    return lines
