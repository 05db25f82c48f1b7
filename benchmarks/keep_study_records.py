"""Keep a study's finished runs in the repository, without their checkpoints: the study file, each done
point's status and log, and its run folder's config, metrics, summary and evaluation results. The
tables (benchmarks/cifar10_study.py --studies benchmarks/results/studies) and `mimreg results` read
them as they read a live study, so a table can be checked from a clone; a study folder restored from
them (cp -r) resumes with those points done, on a machine that has lost the live folder.

    python benchmarks/keep_study_records.py /work/studies/cifar10_beyond_cpu   # -> benchmarks/results/studies/
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mimreg.study.ledger import read_status, status_path

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "benchmarks" / "results" / "studies"
LEFT_OUT = {"checkpoints", ".lock"}  # the weights (17 MB a ViT-tiny step), and the run's lock
LARGEST_FILE = 1 << 20  # anything bigger is not a record (a feature cache, an export): left out, said so


def done_points(study_dir: Path) -> list[str]:
    return sorted(path.stem for path in (study_dir / "status").glob("*.json")
                  if read_status(study_dir, path.stem).state == "done")


def keep(study_dir: Path, into: Path) -> list[str]:
    """Copy the records of `study_dir`'s done points into `into`/<study name>; returns the points kept."""
    target = into / study_dir.name
    points = done_points(study_dir)
    (target / "status").mkdir(parents=True, exist_ok=True)
    (target / "logs").mkdir(exist_ok=True)
    shutil.copy2(study_dir / "study.yaml", target / "study.yaml")
    for name in points:
        shutil.copy2(status_path(study_dir, name), status_path(target, name))
        log = study_dir / "logs" / f"{name}.log"
        if log.is_file():
            shutil.copy2(log, target / "logs" / log.name)
        copy_records(study_dir / "runs" / name, target / "runs" / name)
    return points


def copy_records(run: Path, target: Path) -> None:
    for path in sorted(run.rglob("*")):
        relative = path.relative_to(run)
        if path.is_dir() or LEFT_OUT & set(relative.parts):
            continue
        if path.stat().st_size > LARGEST_FILE:
            print(f"left out {path} ({path.stat().st_size / 2**20:.1f} MiB)")
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dirs", nargs="+", type=Path)
    parser.add_argument("--into", type=Path, default=KEPT)
    args = parser.parse_args()
    for study_dir in args.study_dirs:
        points = keep(study_dir, args.into)
        print(f"{study_dir}: {len(points)} done point(s) kept in {args.into / study_dir.name}")


if __name__ == "__main__":
    main()
