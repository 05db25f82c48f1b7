"""MAE vs U-MAE vs M-MAE vs MU-MAE on real CIFAR-10 under one fixed CPU budget.

Uses the CIFAR-10 JPEGs of shared/data/cifar10-jpg.tar.gz (extracted to a temporary folder; pass
--data-root to reuse an extracted copy). Pretrains the four recipes with the `cifar10-cpu` preset
(vit_micro/4, decoder 96/2, lr 1e-3, batch 256) on a random subset, then evaluates each on unmasked
images: linear probe (MAGMA protocol), kNN (k=10 Euclidean, k=20 cosine) and effective rank, for the
cls token and the mean of the patch tokens. Writes benchmarks/results/cifar10_quality.md.

    python benchmarks/cifar10_quality.py [--subset 10000] [--epochs 12] [--eval-train 10000]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tarfile
import tempfile
from pathlib import Path

from mimreg.commands import evaluate
from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.eval import format_table

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
RECIPES = ("mae", "u-mae", "m-mae", "mu-mae")
FORMATS = {"pretrain min": ".1f", "final rec": ".3f", **{f"{m} {p}": ".1f" for m in ("lin", "kNN", "erank")
                                                              for p in ("cls", "mean")}}


def extracted_root(args) -> Path | None:
    if args.data_root:
        return Path(args.data_root)
    if not ARCHIVE.is_file():
        return None
    target = Path(tempfile.mkdtemp(prefix="cifar10-jpg-"))
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(target, filter="data")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder with train/<class>/*.jpg and test/<class>/*.jpg")
    parser.add_argument("--subset", type=int, default=10000, help="random training images for pretraining")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--eval-train", type=int, default=10000, help="random training images for the probes")
    parser.add_argument("--out", default="runs/cifar10_quality")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    root = extracted_root(args)
    if root is None:
        print(f"skipped: {ARCHIVE} not found (pass --data-root to a CIFAR-10 image folder)")
        return 0
    rows = []
    for recipe in args.recipes.split(","):
        cfg = load_config(f"cifar10-cpu/{recipe}", [
            "data.name=imagefolder", f"data.root={root}", "data.img_size=32", f"data.subset={args.subset}",
            f"train.epochs={args.epochs}", "train.progress=false"])
        run_dir = Path(args.out) / recipe
        result = pretrain(cfg, run_dir, resume=True)  # a finished run is reused
        report = evaluate(result.checkpoint, ("linear", "knn", "erank"), pools=("cls", "mean"),
                          train_images=args.eval_train, out_dir=run_dir, echo=print)
        res = report["results"]
        metrics = [m for m in read_metrics(run_dir / "metrics.jsonl") if m.get("kind") == "epoch"]
        row = {"recipe": recipe, "pretrain min": metrics[-1]["time"] / 60, "final rec": metrics[-1]["rec"]}
        for pool in ("cls", "mean"):
            row[f"lin {pool}"] = res["linear"][pool]["top1"]
            row[f"kNN {pool}"] = res["knn"][pool]["knn10_euclidean"]
            row[f"erank {pool}"] = res["erank"][pool]["effective_rank"]
        rows.append(row)
        print(format_table(rows, list(rows[0]), FORMATS), flush=True)
    table = format_table(rows, list(rows[0]), FORMATS)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = ROOT / "benchmarks" / "results" / "cifar10_quality.md"
    out.write_text(
        "# CIFAR-10 quality under a fixed CPU budget\n\n"
        f"Command: `{command}`\n\n"
        f"Set-up: preset `cifar10-cpu` (vit_micro/4, decoder 96/2, AdamW lr 1e-3, batch 256, 1 warm-up epoch, "
        f"cosine), {args.subset} random training images, {args.epochs} epochs, crop scale (0.2, 1) + flip; "
        "U-MAE weight 0.01 on the cls token; MAGMA weight 1 between blocks 5 and 6, on during epochs 1-6. "
        f"Evaluation on unmasked images: {args.eval_train} random training images and the 10,000 test images; "
        "lin = linear probe (SGD, MAGMA protocol, 100 epochs), kNN = k=10 Euclidean, erank = effective rank of "
        "the centred test features; cls = cls token after the final norm, mean = mean of the patch tokens.\n\n"
        f"{table}\n\n`pretrain min` is the wall time of each pretraining on this 2-core machine.\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
