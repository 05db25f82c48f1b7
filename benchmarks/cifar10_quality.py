"""Every method and its regularized variant on real CIFAR-10 under one CPU budget.

Uses the CIFAR-10 JPEGs of shared/data/cifar10-jpg.tar.gz (extracted to a temporary folder; pass
--data-root to reuse an extracted copy). Pretrains each recipe with the `cifar10-cpu` preset
(vit_micro/4, batch 256, lr 1e-3) on a random subset for the number of epochs that gives it about the
CPU time of 12 MAE epochs (EPOCHS below, from the measured step times), then evaluates each on
unmasked images: linear probe (MAGMA protocol), kNN (k=10 Euclidean) and effective rank, for the cls
token and the mean of the patch tokens. Finished runs and evaluations are reused.
Writes benchmarks/results/cifar10_quality.md.

    python benchmarks/cifar10_quality.py [--subset 10000] [--recipes mae,simclr] [--epochs simclr=6]
"""

from __future__ import annotations

import argparse
import json
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
# recipe -> (base recipe, epochs). Epochs give each recipe about the CPU time of 12 MAE epochs; seconds
# per step at batch 256 on this 2-core CPU: MAE ~1.1, SimCLR ~3.2, BYOL ~4.5, MSN ~7, MI-MAE ~4x MAE.
# MI-MAE runs at 1/4 of MAE's epochs: each image is encoded and reconstructed under 4 masks.
EPOCHS = {"mae": ("mae", 12), "u-mae": ("mae", 12), "m-mae": ("mae", 12), "mu-mae": ("mae", 12),
          "mae-x4": ("mae", 3), "mi-mae": ("mae", 3), "msn": ("mae", 2), "simclr": ("simclr", 4), "m-simclr": ("simclr", 4),
          "byol": ("byol", 3), "byol+t-regs": ("byol", 3)}
# "mae-x4": MAE on MI-MAE's 4 orthogonal masks per image without its MI terms (the control of MI-MAE)
ALIASES = {"mae-x4": ("mae", ["method.num_masks=4"])}
PROTOCOLS = ("linear", "knn", "erank")
FORMATS = {"pretrain min": ".1f", "final loss": ".3f", **{f"{m} {p}": ".1f" for m in ("lin", "kNN", "erank")
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


def cached_evaluation(run_dir: Path) -> dict | None:
    """The results of an earlier evaluation of this run, when every protocol's JSON is there."""
    files = [run_dir / f"eval_{p}.json" for p in PROTOCOLS]
    if not all(f.is_file() for f in files):
        return None
    return {p: json.loads(f.read_text())["results"] for p, f in zip(PROTOCOLS, files)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder with train/<class>/*.jpg and test/<class>/*.jpg")
    parser.add_argument("--subset", type=int, default=10000, help="random training images for pretraining")
    parser.add_argument("--epochs", default="", help="overrides, e.g. simclr=6,msn=3")
    parser.add_argument("--eval-train", type=int, default=10000, help="random training images for the probes")
    parser.add_argument("--out", default="runs/cifar10_quality")
    parser.add_argument("--recipes", default=",".join(EPOCHS))
    args = parser.parse_args()
    epochs = {r: e for r, (_, e) in EPOCHS.items()}
    epochs.update({r: int(n) for r, n in (item.split("=") for item in args.epochs.split(",") if item)})
    root = extracted_root(args)
    if root is None:
        print(f"skipped: {ARCHIVE} not found (pass --data-root to a CIFAR-10 image folder)")
        return 0
    rows = []
    for recipe in args.recipes.split(","):
        name, extra = ALIASES.get(recipe, (recipe, []))
        cfg = load_config(f"cifar10-cpu/{name}", [
            "data.name=imagefolder", f"data.root={root}", "data.img_size=32", f"data.subset={args.subset}",
            f"train.epochs={epochs[recipe]}", "train.progress=false", *extra])
        run_dir = Path(args.out) / recipe
        result = pretrain(cfg, run_dir, resume=True)  # a finished run is reused
        res = cached_evaluation(run_dir) or evaluate(
            result.checkpoint, PROTOCOLS, pools=("cls", "mean"), train_images=args.eval_train, out_dir=run_dir,
            echo=print)["results"]
        metrics = [m for m in read_metrics(run_dir / "metrics.jsonl") if m.get("kind") == "epoch"]
        last = metrics[-1]  # the method's own terms are the keys without a "/" prefix
        own = sum(v for k, v in last.items() if "/" not in k and k not in ("kind", "step", "epoch", "loss", "time"))
        row = {"recipe": recipe, "base": EPOCHS.get(recipe, (recipe,))[0], "epochs": epochs[recipe],
               "steps": metrics[-1]["step"], "pretrain min": metrics[-1]["time"] / 60,
               "final loss": own}
        for pool in ("cls", "mean"):
            row[f"lin {pool}"] = res["linear"][pool]["top1"]
            row[f"kNN {pool}"] = res["knn"][pool]["knn10_euclidean"]
            row[f"erank {pool}"] = res["erank"][pool]["effective_rank"]
        rows.append(row)
        print(format_table(rows, list(rows[0]), FORMATS), flush=True)
    table = format_table(rows, list(rows[0]), FORMATS)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = ROOT / "benchmarks" / "results" / "cifar10_quality.md"
    old = out.read_text() if out.is_file() else ""
    notes = old[old.index("\n## Notes"):] if "\n## Notes" in old else ""  # hand-written, kept
    out.write_text(
        "# CIFAR-10 quality under a fixed CPU budget\n\n"
        f"Command: `{command}`\n\n"
        f"Set-up: preset `cifar10-cpu` (vit_micro/4, AdamW lr 1e-3, batch 256, 1 warm-up epoch, cosine), "
        f"{args.subset} random training images; each recipe runs the epochs that give it about the CPU time of "
        "12 MAE epochs (MI-MAE: 1/4 of MAE's epochs, 4 masks per image; mae-x4: the same without the MI terms). MAE family: decoder 96/2, crop (0.2, 1) "
        "+ flip, U-MAE weight 0.01 on cls, MAGMA weight 1 between blocks 5 and 6 on during epochs 1-6. "
        "Joint methods: SimCLR augmentation, projectors 512-d hidden; M-SimCLR: MAGMA between the last two "
        "blocks from epoch 1; BYOL+T-REGS: beta 1, gamma 0.02, lambda 8e-5 per view. MSN: 1 target + 1 anchor "
        "(token drop 0.3) + 10 focal views, evaluated with its target encoder. MI-MAE: InfoNCE 1 + CLUB 10 from "
        "epoch 1. "
        f"Evaluation on unmasked images: {args.eval_train} random training images and the 10,000 test images; "
        "lin = linear probe (SGD, MAGMA protocol, 100 epochs), kNN = k=10 Euclidean, erank = effective rank of "
        "the centred test features; cls = cls token after the final norm, mean = mean of the patch tokens.\n\n"
        f"{table}\n\n`pretrain min` is the wall time of each pretraining on this 2-core machine.\n{notes}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
