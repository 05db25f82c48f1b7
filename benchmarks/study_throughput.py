"""How a study should use this machine's cores, and what the data path and torch.compile cost it.

Each case pretrains a recipe for --steps steps (train.halt_after_steps) in fresh folders, side by
side in one run of this script, and reports training img/s from the runs' metrics.jsonl (the steps
after the first, so start-up and compilation are left out; the start-up is reported on its own):

  1x2     one run with 2 threads (the cores it may use: 0 and 1)
  2x1     two runs at once, 1 thread each, pinned to core 0 and core 1: img/s summed
  loader  as 2x1, with data.pipeline=loader (PIL workers) instead of the device path
  compile as 2x1, with train.compile=true

The cases run in turn, --repeats rounds (ABCD ABCD ...), and each reports its median over rounds:
other load on the machine then hits every case alike.

    python benchmarks/study_throughput.py --data-root /work/data/c10 [--recipe cifar10-cpu/mae] [--steps 30]
        [--repeats 3] [--cases 1x2,2x1,loader,compile] [--set KEY=VALUE ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {  # name: (runs at once, threads per run, extra settings)
    "1x2": (1, 2, []),
    "2x1": (2, 1, []),
    "loader": (2, 1, ["data.pipeline=loader", "data.num_workers=0"]),
    "compile": (2, 1, ["train.compile=true"]),
}


def train_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "train"]


def launch(run: Path, recipe: str, sets: list[str], cores: list[int]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cores)), "MKL_NUM_THREADS": str(len(cores))}
    command = [sys.executable, "-m", "mimreg.cli", "pretrain", recipe, "--out", str(run)]
    for item in sets:
        command += ["--set", item]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores))


def run_case(name: str, recipe: str, sets: list[str], steps: int, work: Path) -> dict:
    """One round of case `name` in fresh folders under `work`."""
    runs, threads, extra = CASES[name]
    began = time.perf_counter()
    processes = []
    for i in range(runs):
        cores = list(range(i * threads, (i + 1) * threads))
        run = work / f"{name}-{i}"
        shutil.rmtree(run, ignore_errors=True)
        processes.append((run, launch(run, recipe, [*sets, *extra, f"train.halt_after_steps={steps}",
                                                    "train.log_every=1", f"train.seed={i}"], cores)))
    rates, startups = [], []
    for run, process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{name}: {run} failed: {err.strip().splitlines()[-1] if err.strip() else process.returncode}")
        records = train_records(run)
        batch = records[0].get("batch") or int([s for s in sets if s.startswith("optim.batch_size=")][-1].split("=")[1])
        rates.append((len(records) - 1) * batch / (records[-1]["time"] - records[0]["time"]))
        startups.append(records[0]["time"])
    return {"case": name, "runs": runs, "threads": threads, "img_per_s": sum(rates),
            "img_per_s_per_run": rates, "first_step_s": startups, "wall_s": time.perf_counter() - began}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="CIFAR-10 image folder (train/<class>/*.jpg); default: synthetic data")
    parser.add_argument("--recipe", default="cifar10-cpu/mae")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case, interleaved")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("skipped: needs 2 cores")
        return 0
    data = ([f"data.root={args.data_root}", "data.name=imagefolder", "data.img_size=32", "data.subset=5000"]
            if args.data_root else ["data.name=synthetic", "data.img_size=32", "data.subset=5000"])
    sets = [*data, "optim.batch_size=256", "train.progress=false", "train.knn_every=0", *args.sets]
    cases = args.cases.split(",")
    rounds: dict[str, list[dict]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(prefix="study-throughput-") as scratch:
        work = Path(args.out) if args.out else Path(scratch)
        for _ in range(args.repeats):
            for name in cases:
                rounds[name].append(run_case(name, args.recipe, sets, args.steps, work))
    median = {name: statistics.median(r["img_per_s"] for r in rounds[name]) for name in cases}
    base = median.get("2x1", median[cases[0]])
    print(f"{args.recipe}, batch 256, {args.steps} steps per run, img/s over steps 2..{args.steps} summed over the "
          f"runs of a case; median of {args.repeats} interleaved rounds (each round's value in brackets)")
    for name in cases:
        runs, threads, _ = CASES[name]
        each = ", ".join(f"{r['img_per_s']:.1f}" for r in rounds[name])
        first = statistics.median(max(r["first_step_s"]) for r in rounds[name])
        print(f"  {name:<8} {runs} run(s) x {threads} thread(s): {median[name]:7.1f} img/s [{each}]; "
              f"x{median[name] / base:.2f} of 2x1; first step {first:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
