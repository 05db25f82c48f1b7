"""The tables of benchmarks/studies/cifar10_cpu.yaml: each comparison of the study as
`mimreg results RUNS --group-by KEY --baseline GROUP` (mean and 95% interval per group over seeds,
paired differences to the baseline with their verdict), written to benchmarks/results/cifar10_study.md.
Runs not finished yet are left out and counted, so the file can be written while the study runs.

    mimreg study benchmarks/studies/cifar10_cpu.yaml --out /work/studies/cifar10_cpu   # the runs
    python benchmarks/cifar10_study.py --study /work/studies/cifar10_cpu                 # the tables
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mimreg.eval.grouped_results import grouped_statistics, grouped_table
from mimreg.eval.report import format_table

ROOT = Path(__file__).resolve().parents[1]
# title, run-name patterns (globs under STUDY/runs), grouping key, baseline group
COMPARISONS = [
    ("MAE, U-MAE, M-MAE, MU-MAE (5 seeds)", ["cifar10-cpu-mae_seed*", "cifar10-cpu-u-mae_seed*",
                                            "cifar10-cpu-m-mae_seed*", "cifar10-cpu-mu-mae_seed*"],
     "recipe", "recipe=cifar10-cpu/mae"),
    ("U-MAE's weight (the paper's 0.01: 5 seeds; others: 3)", ["cifar10-cpu-u-mae_seed*",
                                                             "cifar10-cpu-u-mae_uniformity.weight=*"],
     "regularizers.uniformity.weight", "regularizers.uniformity.weight=0.01"),
    ("MAGMA's weight in M-MAE (the recipe's 1: 5 seeds; others: 3)", ["cifar10-cpu-m-mae_seed*",
                                                                     "cifar10-cpu-m-mae_magma.weight=*"],
     "regularizers.magma.weight", "regularizers.magma.weight=1.0"),
    ("MAE's data path: device (the default) vs loader (PIL)", ["cifar10-cpu-mae_seed*",
                                                               "cifar10-cpu-mae_pipeline=loader_seed*"],
     "data.pipeline", "data.pipeline=auto"),
    ("BYOL vs BYOL+T-REGS (5 seeds, 3 epochs)", ["cifar10-cpu-byol_epochs=3_seed*",
                                                 "cifar10-cpu-byol+t-regs_epochs=3_seed*"],
     "recipe", "recipe=cifar10-cpu/byol"),
    ("SimCLR vs M-SimCLR (5 seeds, 4 epochs)", ["cifar10-cpu-simclr_epochs=4_seed*",
                                                "cifar10-cpu-m-simclr_epochs=4_seed*"],
     "recipe", "recipe=cifar10-cpu/simclr"),
]


# the metrics of the verdict summary: (column title, metric name prefix)
HEADLINE = [("linear cls", "linear-sweep cls "), ("linear mean", "linear-sweep mean "),
            ("kNN-10 cls", "knn10_euclidean cls "), ("kNN-10 mean", "knn10_euclidean mean "),
            ("erank cls", "erank cls "), ("erank mean", "erank mean ")]


def finished(run: Path, study: Path) -> bool:
    status = study / "status" / f"{run.name}.json"
    return status.is_file() and json.loads(status.read_text()).get("state") == "done"


def section(study: Path, title: str, patterns: list[str], key: str, baseline: str) -> str:
    runs = sorted({run for pattern in patterns for run in (study / "runs").glob(pattern)})
    done = [run for run in runs if finished(run, study)]
    head = f"## {title}\n\n{len(done)} runs finished so far ({len(runs)} started).\n\n"
    if len({run.name.rsplit("_seed", 1)[0] for run in done}) < 2:
        return head + "Not enough finished groups to compare yet.\n"
    command = f"mimreg results {' '.join(str(study / 'runs' / p) for p in patterns)} --group-by {key} " \
              f"--baseline {baseline}"
    try:
        table = grouped_table(done, "markdown", [key], baseline)
    except Exception as err:  # a baseline not finished yet
        return head + f"Not comparable yet: {err}\n"
    return head + f"```\n{command}\n```\n\n{table}\n"


def finished_runs(study: Path, patterns: list[str]) -> list[Path]:
    runs = sorted({run for pattern in patterns for run in (study / "runs").glob(pattern)})
    return [run for run in runs if finished(run, study)]


def verdict_rows(study: Path, title: str, patterns: list[str], key: str, baseline: str) -> list[dict]:
    """One row per group other than the baseline: each headline metric's paired difference to the
    baseline, its 95% interval and verdict."""
    done = finished_runs(study, patterns)
    if len({run.name.rsplit("_seed", 1)[0] for run in done}) < 2:
        return []
    try:
        data = grouped_statistics(done, [key], baseline)
    except Exception:  # the baseline has not finished yet
        return []
    rows: dict[str, dict] = {}
    for stat in data["statistics"]:
        column = next((name for name, prefix in HEADLINE if stat["metric"].startswith(prefix)), None)
        if column is None or stat["difference"] is None:
            continue
        # a grid axis is named by its last two parts (uniformity.weight 0.003 vs 0.01); a recipe by itself
        axis = "" if key == "recipe" else ".".join(key.split(".")[-2:]) + " "
        row = rows.setdefault(stat["group"], {"comparison": f"{axis}{stat['group'].split('=', 1)[1]} vs "
                                                            f"{baseline.split('=', 1)[1]} (n={stat['n']})"})
        if stat["difference_ci_low"] is None:  # one pair so far: no interval, no verdict
            row[column] = f"{stat['difference']:+.1f} (one seed: no interval)"
            continue
        row[column] = (f"{stat['difference']:+.1f} [{stat['difference_ci_low']:.1f}, "
                       f"{stat['difference_ci_high']:.1f}] {VERDICT_MARK[stat['verdict']]}")
    return list(rows.values())


VERDICT_MARK = {"higher": "higher", "lower": "lower", "no difference shown": "n.d."}


def verdict_summary(study: Path) -> str:
    rows = [row for comparison in COMPARISONS for row in verdict_rows(study, *comparison)]
    if not rows:
        return ""
    table = format_table(rows, ["comparison", *(name for name, _ in HEADLINE)])
    return ("## Verdicts\n\nPaired difference to the baseline over seeds (points; erank in its own units), "
            "its 95% interval, and the verdict at the 95% level (n.d. = no difference shown). "
            f"{len(rows) * len(HEADLINE)} comparisons, each at 95%, no correction for multiplicity: about "
            "one in twenty 'higher'/'lower' where nothing differs is expected by chance.\n\n" + table + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study folder (mimreg study --out)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cifar10_study.md"))
    args = parser.parse_args()
    study = Path(args.study)
    if not (study / "runs").is_dir():
        print(f"skipped: {study} holds no runs yet")
        return 0
    text = ["# CIFAR-10 at CPU scale, with seeds (benchmarks/studies/cifar10_cpu.yaml)\n",
            "Each table: mean over seeds with its 95% interval (Student's t) per group; differences to the "
            "baseline with their 95% interval, paired by seed where both groups share seeds (paired t-test, "
            "scipy), and the verdict at the 95% level.\n"]
    text.append(verdict_summary(study))
    text += [section(study, *comparison) for comparison in COMPARISONS]
    Path(args.results).write_text("\n".join(text))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
