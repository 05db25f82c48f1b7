"""The `mimreg eval PROTOCOL` and `mimreg results` subcommands (mimreg.cli adds them to its parser)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

POOLS = ["cls", "mean", "cls_prenorm"]
FROZEN = {
    "linear": "linear probe on frozen features (default: logistic regression on standardised features, "
              "weight decay chosen by cross-validation)",
    "knn": "k-NN: 10-NN Euclidean majority, 20-NN 1/(d+eps)-weighted, 20-NN cosine",
    "erank": "effective rank of the test features",
    "lowshot": "MSN low-shot logistic regression: 1/2/5 per class, 1%, 10%",
    "robustness": "MSN masking robustness: cosine(masked, unmasked) and low-shot with masked train images",
}


def add_checkpoint_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--checkpoint", required=required, help="a ckpt_*.pt file or a run folder")
    p.add_argument("--data", help="dataset name (default: the one it was pretrained on)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--test-images", type=int, help="embed a random subset of the test split")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:N")
    add_import_args(p)


def add_import_args(p: argparse.ArgumentParser) -> None:
    """A checkpoint's config may name modules to import (its own methods or regularizers); importing
    runs their code, so they are imported only when the user passes or trusts them."""
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module (or .py file) the run was trained with; repeatable")
    p.add_argument("--trust-imports", action="store_true",
                   help="import every module the checkpoint's config names (runs their code)")


def add_skip_bad_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out image files that do not decode (with a warning) instead of stopping")


def import_consented(args, checkpoints) -> None:
    """Import the modules passed with --import, and with --trust-imports those `checkpoints` name."""
    from mimreg.engine.checkpoint import stored_imports
    from mimreg.plugins import absolute_import_paths, import_user_modules

    import_user_modules(absolute_import_paths(args.imports))
    if args.trust_imports:
        for checkpoint in checkpoints:
            import_user_modules(stored_imports(checkpoint))


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder: frozen features or fine-tuning")
    protocols = p.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for name, text in FROZEN.items():
        q = protocols.add_parser(name, help=text.replace("%", "%%"), description=text)
        add_checkpoint_args(q)
        q.add_argument("--train-images", type=int, help="embed a random subset of the training split")
        add_skip_bad_images(q)
        if name == "robustness":
            q.add_argument("--pool", choices=POOLS, default="cls", help="feature (default cls)")
        else:
            q.add_argument("--pool", action="append", choices=POOLS,
                           help="feature(s), repeatable; default cls (cls_prenorm: last block's cls before "
                                "the final norm, MSN's low-shot features)")
        if name in ("linear", "knn", "lowshot"):
            q.add_argument("--subset", metavar="FILE|NAME",
                           help="train only on the images a list names (one file name or relative path a line), "
                                "or a named list: 1percent, 10percent (SimCLR; 10percent not shipped), 1img-split1 ... "
                                "5img-split3 (MSN)")
            q.add_argument("--feature-store", metavar="DIR",
                           help="write the features to DIR in chunks and read them back from disk (default: "
                                "RUN/features, only for splits of more than 200000 images)")
        if name == "linear":
            q.add_argument("--linear-protocol", default="sweep", choices=["sweep", "magma", "mae", "lars"],
                           help="sweep (default): logistic regression on standardised features fit to "
                                "convergence (L-BFGS), its weight decay (1e-6..1) chosen by 5-fold "
                                "cross-validation on the train split, refit; magma: MAGMA's SGD recipe on raw "
                                "features; mae: MAE's BatchNorm (no affine) before the layer; lars: MAE's "
                                "ImageNet-1k recipe (BatchNorm, LARS, lr 0.1 x batch/256, batch 16384, 90 epochs)")
            q.add_argument("--epochs", type=int,
                           help="linear probe epochs (default 100, lars 90); for sweep, the most L-BFGS "
                                "iterations of each fit (each a full pass over the features)")
        q.set_defaults(run=cmd_eval)
    add_finetune_parser(protocols)


def _optional(kind):
    """int/float settings take `none` for unset (e.g. --clip-grad none); strings are kept as given."""
    def parse(text: str):
        return None if kind is not str and text.lower() in ("none", "null") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_finetune_parser(protocols) -> None:
    import dataclasses
    import typing

    from mimreg.eval.finetune_config import HEAD_INITS, HEADS, PRECISIONS, PRESETS, STRATEGIES, FinetuneConfig

    text = ("fine-tune the encoder end to end (MAE's protocol: AdamW + layer decay, warm-up + cosine, drop path, "
            "RandAugment, random erasing, Mixup/CutMix, label smoothing)")
    q = protocols.add_parser("finetune", help=text, description=text + ". Settings left out take the preset of "
                             f"the encoder's size: {', '.join(f'{k} {v}' for k, v in PRESETS.items())}.")
    add_checkpoint_args(q, required=False)
    q.add_argument("--init", help="instead of --checkpoint: weights no mimreg run made (a timm model name in the local "
                   "Hugging Face cache, a .pth/.safetensors file, a `mimreg export` folder), the baseline without "
                   "pretraining by mimreg; needs --data and --out")
    q.add_argument("--img-size", type=int, help="with --init: the image size (default: the weights' own; the "
                   "positions are resampled)")
    q.add_argument("--out", help="fine-tuning folder for its checkpoints (default RUN/finetune/<result name>)")
    q.add_argument("--resume", action="store_true", help="continue the fine-tuning in --out from its last checkpoint")
    add_skip_bad_images(q)
    hints = typing.get_type_hints(FinetuneConfig)
    for f in dataclasses.fields(FinetuneConfig):
        if f.name == "test_images":
            continue  # the common --test-images
        kind = str if f.name == "warmup_epochs" else next(  # warm-up: epochs or "5%" of the run
            t for t in (int, float, str) if t in (hints[f.name], *typing.get_args(hints[f.name])))
        default = "from the preset" if f.default is None and f.name in PRESETS["small"] else f.default
        q.add_argument(f"--{f.name.replace('_', '-')}", type=_optional(kind), default=None,
                       choices={"head": HEADS, "head_init": HEAD_INITS, "precision": PRECISIONS,
                                                       "strategy": STRATEGIES}.get(f.name), help=f"default: {default}")
    q.set_defaults(run=cmd_finetune)


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch (or a single process); readable after the group is gone."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def resume_command(argv: list[str], out: Path | None) -> str:
    """The command line that continues the run `argv` started (pretraining or fine-tuning): the same,
    without its halt, with the folder it trains in (`out`, where --out was not given) and --resume."""
    if argv[:1] == ["study"]:  # a study continues by running the same command again
        return shlex.join(["mimreg", *argv])
    parts, skip = ["mimreg"], False
    for i, item in enumerate(argv):
        if skip:
            skip = False
        elif item == "--halt-after-steps" or (item == "--set" and argv[i + 1:i + 2] and
                                              argv[i + 1].startswith("train.halt_after_steps=")):
            skip = True
        elif not item.startswith("--halt-after-steps="):
            parts.append(item)
    if out is not None and "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        parts += ["--out", str(out)]
    if "--resume" not in argv:
        parts.append("--resume")
    return shlex.join(parts)


def cmd_finetune(args) -> int:
    import dataclasses

    from mimreg import distributed
    from mimreg.eval.finetune import finetune
    from mimreg.eval.finetune_config import FinetuneConfig

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)}
    if (args.checkpoint is None) == (args.init is None):
        from mimreg.errors import MimregError

        raise MimregError("pass --checkpoint (a mimreg run) or --init (weights from elsewhere), one of them")
    import_consented(args, [args.checkpoint] if args.checkpoint else [])
    try:
        result = finetune(args.checkpoint, overrides, data=args.data, data_root=args.data_root, device=args.device,
                          out=args.out, resume=args.resume, skip_bad_images=args.skip_bad_images, init=args.init,
                          img_size=args.img_size)
    finally:
        distributed.shutdown()  # under torchrun: leave the process group together (a no-op otherwise)
    if result.get("halted") and is_main_process():
        print(f"continue with:\n  {resume_command(args.argv, Path(result['out']))}", flush=True)
    return 0


def add_results_parser(sub) -> None:
    p = sub.add_parser("results", help="one table of every evaluation of every run, with differences to the first")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders, or a study folder (its runs); the first is the baseline")
    p.add_argument("--format", default="markdown", choices=["markdown", "csv", "json"])
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--group-by", nargs="?", const="", metavar="KEY[,KEY...]",
                   help="group runs by these config keys (recipe, optim.lr, ...; alone: every setting that differs "
                        "but the seed) and give each group's mean and 95%% interval over seeds")
    p.add_argument("--baseline", metavar="GROUP",
                   help="the group others are compared to (KEY=VALUE or its label; default: the first run's); "
                        "implies --group-by")
    p.set_defaults(run=cmd_results)

    p = sub.add_parser("seeds-needed", help="how many seeds a t-test needs to find a difference of a given size")
    p.add_argument("--difference", type=float, nargs="+", required=True, help="the differences to find")
    p.add_argument("--spread", type=float, required=True,
                   help="standard deviation over seeds of one run's value (with --paired: of the per-seed differences)")
    p.add_argument("--paired", action="store_true", help="runs paired by seed (paired t-test)")
    p.add_argument("--power", type=float, default=0.8, help="the chance of finding the difference (default 0.8)")
    p.set_defaults(run=cmd_seeds_needed)


def cmd_eval(args) -> int:
    from mimreg.eval.evaluate import evaluate, robustness

    import_consented(args, [args.checkpoint])
    common = dict(data=args.data, data_root=args.data_root, train_images=args.train_images,
                  test_images=args.test_images, device=args.device, skip_bad_images=args.skip_bad_images)
    if args.protocol == "robustness":
        robustness(args.checkpoint, pool=args.pool, **common)
        return 0
    linear = {"linear_protocol": args.linear_protocol, "linear_epochs": args.epochs} if args.protocol == "linear" else {}
    stored = {"subset": args.subset, "feature_store": args.feature_store} if args.protocol != "erank" else {}
    evaluate(args.checkpoint, [args.protocol], pools=tuple(dict.fromkeys(args.pool or ["cls"])), **linear, **stored,
             **common)
    return 0


def cmd_results(args) -> int:
    from mimreg.eval.results import results_table, run_folders
    from mimreg.io import atomic_write

    runs = run_folders(args.runs)
    if args.group_by is not None or args.baseline is not None:
        from mimreg.eval.grouped_results import grouped_table

        keys = [k.strip() for k in (args.group_by or "").split(",") if k.strip()] or None
        table = grouped_table(runs, args.format, keys, args.baseline)
    else:
        table = results_table(runs, args.format)
    print(table)
    if args.out:
        text = table if table.endswith("\n") else table + "\n"
        atomic_write(args.out, lambda handle: handle.write(text), binary=False)
    return 0


def cmd_seeds_needed(args) -> int:
    from mimreg.errors import MimregError
    from mimreg.eval.report import format_table
    from mimreg.eval.statistics import LEVEL, seeds_needed

    if not 0 < args.power < 1:
        raise MimregError(f"--power {args.power}: give a chance between 0 and 1, e.g. 0.8")
    test = "paired t-test: each seed run in both groups" if args.paired else "unpaired t-test: seeds in each group"
    print(f"seeds needed to find a difference with chance {args.power:.0%} at the {LEVEL:.0%} level "
          f"(two-sided {test}), spread {args.spread:g}")
    rows = [{"difference": d, "seeds": seeds_needed(d, args.spread, args.paired, args.power)} for d in args.difference]
    print(format_table(rows, ["difference", "seeds"], formats={"difference": "g"}))
    return 0
