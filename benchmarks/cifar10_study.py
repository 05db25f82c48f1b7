"""The tables of the CIFAR-10 CPU studies (benchmarks/studies/cifar10_*.yaml): each comparison as
`mimreg results RUNS --group-by KEY --baseline GROUP` (mean and 95% interval per group over seeds,
paired differences to the baseline with their verdict), written to benchmarks/results/cifar10_*study.md.
Runs not finished yet are left out and counted, so the files can be written while the studies run.
Each study runs into STUDIES/<its yaml's name>; a comparison may take its baseline from another study.

    mimreg study benchmarks/studies/cifar10_cpu.yaml --out /work/studies/cifar10_cpu   # the runs, per study
    python benchmarks/cifar10_study.py --studies /work/studies                            # the tables
    python benchmarks/cifar10_study.py --studies benchmarks/results/studies               # from kept records
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mimreg.eval.grouped_results import grouped_statistics, grouped_table
from mimreg.eval.report import format_table

ROOT = Path(__file__).resolve().parents[1]
# results file -> (its title, its comparisons); a comparison: title, run patterns ("STUDY/GLOB": a glob
# under STUDIES/STUDY/runs, STUDY the name of its benchmarks/studies/*.yaml), grouping key, baseline group
TABLES = {
    "cifar10_study.md": ("CIFAR-10 at CPU scale, with seeds (benchmarks/studies/cifar10_cpu.yaml)", [
        ("MAE, U-MAE, M-MAE, MU-MAE (5 seeds)", ["cifar10_cpu/cifar10-cpu-mae_seed*", "cifar10_cpu/cifar10-cpu-u-mae_seed*",
                                                "cifar10_cpu/cifar10-cpu-m-mae_seed*", "cifar10_cpu/cifar10-cpu-mu-mae_seed*"],
         "recipe", "recipe=cifar10-cpu/mae"),
        ("U-MAE's weight (the paper's 0.01: 5 seeds; others: 3)",
         ["cifar10_cpu/cifar10-cpu-u-mae_seed*", "cifar10_cpu/cifar10-cpu-u-mae_uniformity.weight=*"],
         "regularizers.uniformity.weight", "regularizers.uniformity.weight=0.01"),
        ("MAGMA's weight in M-MAE (the recipe's 1: 5 seeds; others: 3)",
         ["cifar10_cpu/cifar10-cpu-m-mae_seed*", "cifar10_cpu/cifar10-cpu-m-mae_magma.weight=*"],
         "regularizers.magma.weight", "regularizers.magma.weight=1.0"),
        ("MAE's data path: device (the default) vs loader (PIL)",
         ["cifar10_cpu/cifar10-cpu-mae_seed*", "cifar10_cpu/cifar10-cpu-mae_pipeline=loader_seed*"],
         "data.pipeline", "data.pipeline=auto"),
        ("BYOL vs BYOL+T-REGS (5 seeds, 3 epochs)",
         ["cifar10_cpu/cifar10-cpu-byol_epochs=3_seed*", "cifar10_cpu/cifar10-cpu-byol+t-regs_epochs=3_seed*"],
         "recipe", "recipe=cifar10-cpu/byol"),
        ("SimCLR vs M-SimCLR (5 seeds, 4 epochs)",
         ["cifar10_cpu/cifar10-cpu-simclr_epochs=4_seed*", "cifar10_cpu/cifar10-cpu-m-simclr_epochs=4_seed*"],
         "recipe", "recipe=cifar10-cpu/simclr"),
    ]),
    "cifar10_resnet_study.md": ("ResNet-18 (CIFAR stem) at CPU scale, with seeds "
                                "(benchmarks/studies/cifar10_resnet_cpu.yaml)", [
        ("ResNet-18: BYOL vs BYOL+T-REGS (3 seeds, 3 epochs)",
         ["cifar10_resnet_cpu/cifar10-cpu-byol_epochs=3_seed*",
          "cifar10_resnet_cpu/cifar10-cpu-byol+t-regs_epochs=3_seed*"],
         "recipe", "recipe=cifar10-cpu/byol"),
    ]),
    "cifar10_beyond_study.md": ("Regularizers beyond the seeds at CPU scale, with seeds "
                                "(benchmarks/studies/cifar10_beyond_cpu.yaml, its baselines run in it; an earlier measurement of KoLeo "
                                "and VCReg on MAE: cifar10_beyond_study_first_runs.md)", [
        ("MAE + each regularizer (3 seeds, 12 epochs)",
         ["cifar10_beyond_cpu/cifar10-cpu-mae_seed*", "cifar10_beyond_cpu/cifar10-cpu-mae+*_seed*"],
         "recipe", "recipe=cifar10-cpu/mae"),
        ("SimCLR + each regularizer (3 seeds, 4 epochs)",
         ["cifar10_beyond_cpu/cifar10-cpu-simclr_epochs=4_seed*", "cifar10_beyond_cpu/cifar10-cpu-simclr+*_epochs=4_seed*"],
         "recipe", "recipe=cifar10-cpu/simclr"),
        ("LeJEPA with and without KoLeo (3 seeds, 3 epochs)",
         ["cifar10_beyond_cpu/cifar10-cpu-lejepa_epochs=3_seed*",
          "cifar10_beyond_cpu/cifar10-cpu-lejepa+koleo_epochs=3_seed*"],
         "recipe", "recipe=cifar10-cpu/lejepa"),
    ]),
    "small_data_study.md": ("Continued pretraining on a small dataset of another domain, a CPU proxy for the small-data "
                            "preset (benchmarks/studies/small_data_cpu.yaml)", [
        ("MAE from the CIFAR-10 MAE encoder on digits: lr (3 seeds, 20 epochs)",
         ["small_data_cpu/cifar10-cpu-mae_lr=*_seed*"], "optim.lr", "optim.lr=0.001"),
        ("From the CIFAR-10 MAE encoder vs from scratch, both at lr 1e-3 (3 seeds, 20 epochs)",
         ["small_data_cpu/cifar10-cpu-mae_lr=0.001_seed*", "small_data_cpu/cifar10-cpu-mae_init=null_lr=0.001_seed*"],
         "model.init", "model.init=null"),
    ]),
}


# the metrics of the verdict summary: (column title, metric name prefix)
HEADLINE = [("linear cls", "linear-sweep cls "), ("linear mean", "linear-sweep mean "),
            ("kNN-10 cls", "knn10_euclidean cls "), ("kNN-10 mean", "knn10_euclidean mean "),
            ("erank cls", "erank cls "), ("erank mean", "erank mean ")]


def finished_runs(studies: Path, patterns: list[str]) -> list[Path]:
    """The runs matching the patterns whose study marked them done."""
    runs = sorted({run for pattern in patterns for run in run_folders(studies, pattern)})
    return [run for run in runs if run_state(run) == "done"]


def run_folders(studies: Path, pattern: str) -> list[Path]:
    study, glob = pattern.split("/", 1)
    return list((studies / study / "runs").glob(glob))


def run_state(run: Path) -> str | None:
    status = run.parent.parent / "status" / f"{run.name}.json"
    return json.loads(status.read_text()).get("state") if status.is_file() else None


def comparable(done: list[Path]) -> bool:
    return len({run.name.rsplit("_seed", 1)[0] for run in done}) >= 2


def section(studies: Path, title: str, patterns: list[str], key: str, baseline: str) -> str:
    started = {run for pattern in patterns for run in run_folders(studies, pattern)}
    done = finished_runs(studies, patterns)
    head = f"## {title}\n\n{len(done)} runs finished so far ({len(started)} started).\n\n"
    if not comparable(done):
        return head + "Not enough finished groups to compare yet.\n"
    command = f"mimreg results {' '.join(pattern_path(studies, p) for p in patterns)} --group-by {key} " \
              f"--baseline {baseline}"
    try:
        table = grouped_table(done, "markdown", [key], baseline)
    except Exception as err:  # a baseline not finished yet
        return head + f"Not comparable yet: {err}\n"
    return head + f"```\n{command}\n```\n\n{table}\n"


def pattern_path(studies: Path, pattern: str) -> str:
    study, glob = pattern.split("/", 1)
    return str(studies / study / "runs" / glob)


def verdict_rows(studies: Path, title: str, patterns: list[str], key: str, baseline: str) -> list[dict]:
    """One row per group other than the baseline: each headline metric's paired difference to the
    baseline, its 95% interval and verdict."""
    done = finished_runs(studies, patterns)
    if not comparable(done):
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


def verdict_summary(studies: Path, comparisons: list) -> str:
    rows = [row for comparison in comparisons for row in verdict_rows(studies, *comparison)]
    if not rows:
        return ""
    table = format_table(rows, ["comparison", *(name for name, _ in HEADLINE)])
    return ("## Verdicts\n\nPaired difference to the baseline over seeds (points; erank in its own units), "
            "its 95% interval, and the verdict at the 95% level (n.d. = no difference shown). "
            f"{len(rows) * len(HEADLINE)} comparisons, each at 95%, no correction for multiplicity: about "
            "one in twenty 'higher'/'lower' where nothing differs is expected by chance.\n\n" + table + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", required=True,
                        help="the folder holding each study's folder (mimreg study --out STUDIES/<yaml name>)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where the tables go")
    args = parser.parse_args()
    studies = Path(args.studies)
    for name, (title, comparisons) in TABLES.items():
        if not any(run_folders(studies, p) for comparison in comparisons for p in comparison[1]):
            print(f"skipped {name}: no runs of it under {studies} yet")
            continue
        text = [f"# {title}\n",
                "Each table: mean over seeds with its 95% interval (Student's t) per group; differences to the "
                "baseline with their 95% interval, paired by seed where both groups share seeds (paired t-test, "
                "scipy), and the verdict at the 95% level.\n",
                verdict_summary(studies, comparisons)]
        text += [section(studies, *comparison) for comparison in comparisons]
        (Path(args.results) / name).write_text("\n".join(text))
        print(f"wrote {Path(args.results) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
