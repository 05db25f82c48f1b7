"""Fine-tuning on the device as a user runs it (benchmarks/device_check.sh's `finetune` section).

A tiny MAE is pretrained for one epoch on synthetic images, then `mimreg eval finetune` runs on it:
once uninterrupted, once halted mid-epoch and resumed, on every GPU of the machine under torchrun
(2 processes where there are 2 GPUs, else one), with `--precision`. Writes JSON: each command's exit
code and seconds, both runs' per-epoch losses, how far the resumed run's are from the uninterrupted
run's, and whether their final weights are equal.

    python benchmarks/finetune_check.py --device cuda --precision bf16 --work DIR --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

PRETRAIN = ["data.name=synthetic", "data.subset=512", "optim.batch_size=64", "train.epochs=1", "model.arch=vit_micro",
            "train.progress=false", "train.knn_every=0", "monitor=[]"]
# on 1/8 of the synthetic training images (62): 7 steps per epoch in one process, 3 in two; the
# halt at step 5 falls mid-epoch in one process
FINETUNE = ["--fraction", "0.125", "--test-images", "64", "--warmup-epochs", "1", "--blr", "1e-3"]


def mimreg(args: list[str], processes: int) -> tuple[int, float, str]:
    """Run `mimreg ARGS` (under torchrun with `processes` > 1); exit code, seconds, output tail."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    began = time.monotonic()
    proc = subprocess.run([*launcher, "-m", "mimreg.cli", *args], capture_output=True, text=True)
    return proc.returncode, round(time.monotonic() - began, 1), (proc.stdout + proc.stderr)[-2000:]


def epoch_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in records if r.get("kind") == "epoch"]


def same_weights(a: Path, b: Path) -> bool:
    def last(run: Path) -> dict:
        return torch.load(sorted((run / "checkpoints").glob("ckpt_*.pt"))[-1], weights_only=True)["model"]

    wa, wb = last(a), last(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--processes", type=int, help="default: the number of GPUs (at most 2), 1 on CPU")
    p.add_argument("--batch", type=int, default=8, help="per process")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--work", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    processes = args.processes or max(1, min(gpus, 2))
    work = Path(args.work)
    sets = [a for kv in [*PRETRAIN, f"train.device={args.device}"] for a in ("--set", kv)]
    report = {"device": args.device, "gpus": gpus, "processes": processes, "precision": args.precision, "commands": {}}
    code, seconds, tail = mimreg(["pretrain", "mae", *sets, "--out", str(work / "pre")], 1)
    report["commands"]["pretrain"] = {"exit_code": code, "seconds": seconds}
    if code:
        print(tail)
    common = ["eval", "finetune", "--checkpoint", str(work / "pre"), "--device", args.device, "--precision",
              args.precision, "--batch-size", str(args.batch), "--epochs", str(args.epochs), *FINETUNE]
    runs = {"whole": [], "halted": ["--halt-after-steps", "5"], "resumed": ["--resume"]}
    for name, extra in runs.items():
        out = work / ("whole" if name == "whole" else "cut")
        code, seconds, tail = mimreg([*common, "--out", str(out), *extra], processes)
        report["commands"][name] = {"exit_code": code, "seconds": seconds}
        print(f"--- {name}: exit {code} in {seconds} s\n{tail}")
    if all(c["exit_code"] == 0 for c in report["commands"].values()):
        whole, cut = epoch_losses(work / "whole"), epoch_losses(work / "cut")
        # bitwise equality holds on the CPU; GPU kernels with atomics may differ in the last bits
        differences = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(whole, cut)]
        report.update(epochs=len(whole), epoch_losses=whole, resumed_losses=cut,
                      resumed_losses_max_rel_diff=max(differences, default=float("inf")) if len(whole) == len(cut)
                      else float("inf"), resumed_weights_equal=same_weights(work / "whole", work / "cut"))
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = (all(c["exit_code"] == 0 for c in report["commands"].values())
          and report.get("resumed_losses_max_rel_diff", float("inf")) < 1e-3)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
