"""Every method and its regularized variant on real CIFAR-10 under one CPU budget.

Uses the CIFAR-10 JPEGs of shared/data/cifar10-jpg.tar.gz (extracted to a temporary folder; pass
--data-root to reuse an extracted copy). Pretrains each recipe with the `cifar10-cpu` preset
(vit_micro/4, batch 256, lr 1e-3) on a random subset for the number of epochs that gives it about the
CPU time of 12 MAE epochs (EPOCHS below, from the measured step times), then evaluates each on
unmasked images: linear probe (the default: standardised features, lr x weight-decay sweep chosen on
held-out training rows), kNN (k=10 Euclidean) and effective rank, for the cls token and the mean of
the patch tokens; and fine-tunes the MAE family (--finetune-recipes) under the budget of
--finetune-epochs epochs on --finetune-images random training images. Finished runs and evaluations
are reused. Writes benchmarks/results/cifar10_quality.md (or --results), keeping the table of the
earlier MAGMA-protocol probe in it, labelled.

    python benchmarks/cifar10_quality.py [--subset 10000] [--recipes mae,simclr] [--epochs simclr=6]
        [--finetune-epochs 10] [--finetune-images 10000] [--finetune-recipes mae,u-mae]
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
from mimreg.eval.finetune import finetune
from mimreg.eval.results import load_results

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
POOLS = ("cls", "mean")
FINETUNE_RECIPES = "mae,u-mae,m-mae,mu-mae"
FORMATS = {"pretrain min": ".1f", "final loss": ".3f", "ft min": ".1f", "ft top1": ".1f",
           **{f"{m} {p}": ".1f" for m in ("lin", "kNN", "erank", "magma") for p in POOLS}}
EARLIER = "## Earlier table: linear = MAGMA protocol (SGD lr 0.1 on raw features, 100 epochs)"


def extracted_root(args) -> Path | None:
    if args.data_root:
        return Path(args.data_root)
    if not ARCHIVE.is_file():
        return None
    target = Path(tempfile.mkdtemp(prefix="cifar10-jpg-"))
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(target, filter="data")
    return target


def cached_evaluation(run_dir: Path, eval_train: int) -> dict | None:
    """protocol -> pool -> result of an earlier evaluation of this run with the default probe, when
    every protocol and pool is there."""
    found: dict = {}
    for record in load_results(run_dir) if run_dir.is_dir() else []:
        wanted = {} if record["protocol"] == "erank" else {"train": eval_train}
        if {k: v for k, v in record.get("options", {}).items() if v is not None} == wanted:
            if record["protocol"] != "linear" or record["variant"] == "sweep":
                found.setdefault(record["protocol"], {})[record["pool"]] = record["result"]
    return found if all(set(found.get(p, {})) >= set(POOLS) for p in PROTOCOLS) else None


def magma_probe(run_dir: Path, checkpoint, eval_train: int) -> dict:
    """MAGMA's linear protocol (SGD lr 0.1 on raw features) on both pools: the earlier default probe."""
    found = {r["pool"]: r["result"] for r in load_results(run_dir) if r["protocol"] == "linear"
             and r["variant"] == "magma" and r.get("options", {}).get("train") == eval_train}
    if set(found) < set(POOLS):
        found = evaluate(checkpoint, ("linear",), pools=POOLS, train_images=eval_train, linear_protocol="magma",
                         out_dir=run_dir, echo=print)["results"]["linear"]
    return {f"magma {pool}": found[pool]["top1"] for pool in POOLS}


def finetune_settings(args) -> dict:
    """The CPU budget of the fine-tuning: the small-ViT preset, shortened to --finetune-epochs on
    --finetune-images random training images (a stratified fraction of the 50,000)."""
    return {"epochs": args.finetune_epochs, "fraction": args.finetune_images / 50_000,
            "warmup_epochs": min(5.0, max(1.0, args.finetune_epochs / 10)), "test_images": args.finetune_test,
            "eval_every": args.finetune_epochs}  # scored once, at the end: 10,000 test images cost minutes


def finetuned(run_dir: Path, checkpoint, root: Path, args) -> dict:
    """Top-1 and wall minutes of the fine-tuning of one run (reused when its result is there)."""
    settings = finetune_settings(args)
    for record in load_results(run_dir):
        done = record["result"].get("config", {}).get("finetune", {}) if record["protocol"] == "finetune" else {}
        if done and all(done[k] == v for k, v in settings.items()):
            return {"ft top1": record["result"]["top1"], "ft min": record["result"]["minutes"]}
    result = finetune(checkpoint, settings, data="imagefolder", data_root=str(root), out=run_dir / "finetune" / "bench",
                      resume=True, echo=print)
    return {"ft top1": result["top1"], "ft min": result["minutes"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder with train/<class>/*.jpg and test/<class>/*.jpg")
    parser.add_argument("--subset", type=int, default=10000, help="random training images for pretraining")
    parser.add_argument("--epochs", default="", help="overrides, e.g. simclr=6,msn=3")
    parser.add_argument("--eval-train", type=int, default=10000, help="random training images for the probes")
    parser.add_argument("--out", default="runs/cifar10_quality")
    parser.add_argument("--recipes", default=",".join(EPOCHS))
    parser.add_argument("--finetune-recipes", default=FINETUNE_RECIPES, help="recipes to fine-tune ('' for none)")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="the fine-tuning budget: epochs ...")
    parser.add_argument("--finetune-images", type=int, default=10000, help="... on this many training images")
    parser.add_argument("--finetune-test", type=int, help="score the fine-tuning on this many test images (all)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cifar10_quality.md"))
    parser.add_argument("--magma-probe", action="store_true",
                        help="also MAGMA's linear protocol on the same checkpoints (the probe before the default changed)")
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
        res = cached_evaluation(run_dir, args.eval_train) or evaluate(
            result.checkpoint, PROTOCOLS, pools=POOLS, train_images=args.eval_train, out_dir=run_dir,
            echo=print)["results"]
        metrics = [m for m in read_metrics(run_dir / "metrics.jsonl") if m.get("kind") == "epoch"]
        last = metrics[-1]  # the method's own terms are the keys without a "/" prefix
        own = sum(v for k, v in last.items() if "/" not in k and k not in ("kind", "step", "epoch", "loss", "time"))
        row = {"recipe": recipe, "base": EPOCHS.get(recipe, (recipe,))[0], "epochs": epochs[recipe],
               "steps": metrics[-1]["step"], "pretrain min": metrics[-1]["time"] / 60,
               "final loss": own}
        for pool in POOLS:
            row[f"lin {pool}"] = res["linear"][pool]["top1"]
            row[f"kNN {pool}"] = res["knn"][pool]["knn10_euclidean"]
            row[f"erank {pool}"] = res["erank"][pool]["effective_rank"]
        if args.magma_probe:
            row.update(magma_probe(run_dir, result.checkpoint, args.eval_train))
        if recipe in args.finetune_recipes.split(",") and args.finetune_epochs > 0:
            row.update(finetuned(run_dir, result.checkpoint, root, args))
        rows.append(row)
        print(format_table(rows, columns(rows), FORMATS), flush=True)
    write_results(Path(args.results), format_table(rows, columns(rows), FORMATS), args)
    return 0


def columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def write_results(out: Path, table: str, args) -> None:
    """The new table and set-up; the earlier MAGMA-protocol table of the file (labelled) and its notes kept."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    old = out.read_text() if out.is_file() else ""
    notes = old[old.index("\n## Notes"):] if "\n## Notes" in old else ""  # hand-written, kept
    if EARLIER in old:
        earlier = old[old.index(EARLIER):old.index("\n## Notes") if notes else len(old)].rstrip() + "\n"
    elif "Command:" in old:  # the first table of this file, from before the default probe changed
        body = old[old.index("Command:"):old.index("\n## Notes") if notes else len(old)].strip()
        earlier = f"{EARLIER}\n\n{body}\n"
    else:
        earlier = ""
    ft = (f"ft top1 = fine-tuning top-1 (MAE's protocol, small-ViT preset: AdamW blr 1e-3, layer decay 0.75, "
          f"drop path 0.1, RandAugment, random erasing 0.25, Mixup 0.8 / CutMix 1.0, smoothing 0.1, gap head) under "
          f"a CPU budget of {args.finetune_epochs} epochs on {args.finetune_images} random training images "
          f"({finetune_settings(args)['warmup_epochs']:g} warm-up), scored on "
          f"{args.finetune_test or 'the 10,000'} test images; ft min its wall time. ") if args.finetune_epochs > 0 else ""
    out.parent.mkdir(parents=True, exist_ok=True)
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
        "lin = linear probe (the default `sweep`: features standardised with the training statistics, 21 heads "
        "over lr x weight decay trained in one pass, chosen on 10% of the training rows, refit on all), "
        "kNN = k=10 Euclidean, erank = effective rank of the centred test features; cls = cls token after the "
        f"final norm, mean = mean of the patch tokens. "
        + ("magma = MAGMA's linear protocol (SGD lr 0.1 on raw features, 100 epochs; the default probe before "
           "this table) on the same checkpoints. " if args.magma_probe else "") + f"{ft}\n\n"
        f"{table}\n\n`pretrain min` is the wall time of each pretraining on this 2-core machine.\n\n"
        f"{earlier}{notes}")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
