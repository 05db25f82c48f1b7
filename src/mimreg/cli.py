"""`mimreg` command line: pretrain, eval, analyze, report, export, recipes, demo."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from mimreg.errors import MimregError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("interrupted; continue a pretraining run with `mimreg pretrain CONFIG --out DIR --resume`",
              file=sys.stderr)
        return 130
    except Exception as err:  # one clear line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"error: {one_line(err)}", file=sys.stderr)
            if not isinstance(err, MimregError):
                print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2


def one_line(err: Exception) -> str:
    text = str(err).strip()
    # errors raised in DataLoader workers arrive with the worker's traceback in the message
    lines = [line for line in text.splitlines() if line.strip()]
    message = lines[-1] if lines else type(err).__name__
    return message if isinstance(err, MimregError) else f"{type(err).__name__}: {message}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimreg", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain an encoder from a recipe or YAML config")
    p.add_argument("config", help="recipe name (e.g. u-mae, cifar10-cpu/mu-mae) or a .yaml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.blr=1e-3 --set regularizers.magma.weight=2")
    p.add_argument("--out", help="run folder (default runs/<recipe>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(run=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a frozen encoder")
    p.add_argument("protocol", choices=["linear", "knn", "erank", "lowshot", "robustness"])
    add_checkpoint_args(p)
    p.add_argument("--pool", action="append", choices=["cls", "mean"], help="feature(s); default cls")
    p.add_argument("--linear-protocol", default="magma", choices=["magma", "mae"],
                   help="magma: SGD on raw features; mae: BatchNorm (no affine) before the linear layer")
    p.add_argument("--epochs", type=int, default=100, help="linear probe epochs")
    p.add_argument("--train-images", type=int, help="embed a random subset of the training split")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("analyze", help="pictures of an encoder (reconstructions, attention, patch PCA, PaCMAP/t-SNE, "
                                       "curves, spectrum), effective rank and Davies-Bouldin index")
    add_checkpoint_args(p)
    p.add_argument("--pictures", help="comma-separated subset of reconstructions,attention,pca,embeddings,curves,"
                                      "spectrum (default: all)")
    p.add_argument("--embeddings", help="comma-separated 2-D maps: pacmap,tsne,umap (default: pacmap when "
                                        "installed, and tsne)")
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("report", help="one self-contained HTML page comparing run folders")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (the --out of mimreg pretrain)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--title", help="page title (default: the run names)")
    p.add_argument("--no-analyze", action="store_true", help="do not analyse runs that have no analysis.json yet")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("export", help="export the encoder for timm")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", default="timm", choices=["timm"])
    p.add_argument("--out", required=True, help="output .pth file")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("recipes", help="list recipes, presets and regularizers")
    p.set_defaults(run=cmd_recipes)

    p = sub.add_parser("demo", help="pretrain and compare MAE, U-MAE, M-MAE, MU-MAE on a small dataset")
    p.add_argument("--data", default="digits", help="dataset name (default: the embedded digits)")
    p.add_argument("--data-root")
    p.add_argument("--recipes", default="mae,u-mae,m-mae,mu-mae", help="comma-separated recipe names")
    p.add_argument("--epochs", type=int, help="pretraining epochs per recipe (default: the preset's)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(run=cmd_demo)
    return parser


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a ckpt_*.pt file or a run folder")
    p.add_argument("--data", help="dataset name (default: the one it was pretrained on)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--test-images", type=int, help="embed a random subset of the test split")
    p.add_argument("--device", default="cpu")


def cmd_pretrain(args) -> int:
    from mimreg import distributed
    from mimreg.config import load_config
    from mimreg.engine.loop import pretrain

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.recipe.replace("/", "-")
    result = pretrain(cfg, out, resume=args.resume)
    distributed.shutdown()  # under torchrun: leave the process group together (a no-op otherwise)
    if result.halted:
        print(f"halted at step {result.steps} (train.halt_after_steps); continue with --resume --out {out}")
    else:
        print(f"done: {result.steps} steps; checkpoint {result.checkpoint}")
    return 0


def cmd_eval(args) -> int:
    from mimreg.commands import evaluate, robustness

    if args.protocol == "robustness":
        robustness(args.checkpoint, data=args.data, data_root=args.data_root, train_images=args.train_images,
                   test_images=args.test_images, device=args.device)
        return 0

    evaluate(args.checkpoint, [args.protocol], data=args.data, data_root=args.data_root,
             pools=tuple(args.pool or ["cls"]), train_images=args.train_images, test_images=args.test_images,
             linear_protocol=args.linear_protocol, linear_epochs=args.epochs, device=args.device)
    return 0


def cmd_analyze(args) -> int:
    from mimreg.commands import analyze

    from mimreg.analysis.analyze import PICTURES

    pictures = split_list(args.pictures) if args.pictures else PICTURES
    embeddings = split_list(args.embeddings) if args.embeddings else None
    analyze(args.checkpoint, data=args.data, data_root=args.data_root, test_images=args.test_images,
            device=args.device, pictures=pictures, embeddings=embeddings)
    return 0


def cmd_report(args) -> int:
    from mimreg.analysis.report import write_report

    path = write_report(args.runs, args.out, title=args.title, analyze_missing=not args.no_analyze)
    print(f"report: {path}")
    return 0


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def cmd_export(args) -> int:
    from mimreg.commands import export_timm

    info = export_timm(args.checkpoint, args.out)
    print(f"wrote {args.out}; load it with:\n  {info['usage']}")
    return 0


def cmd_recipes(args) -> int:
    import yaml

    from mimreg.config import RECIPES_DIR, preset_names, recipe_names
    from mimreg.methods import METHODS
    from mimreg.regularizers import REGULARIZERS

    print("recipes (mimreg pretrain [PRESET/]RECIPE; default preset digits):")
    for name in recipe_names():
        text = yaml.safe_load((RECIPES_DIR / "methods" / f"{name}.yaml").read_text())
        print(f"  {name:<14} {text.get('description', '')}")
    print("presets (data, model, optimisation):")
    for name in preset_names():
        first = (RECIPES_DIR / "presets" / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"  {name:<14} {first}")
    print("methods:")
    for name, cls in sorted(METHODS.items()):
        print(f"  {name:<14} {cls.summary} [{cls.paper}]")
    print("regularizers:")
    for name, cls in sorted(REGULARIZERS.items()):
        print(f"  {name:<14} {cls.summary} [{cls.paper}]")
    return 0


def cmd_demo(args) -> int:
    from mimreg.demo import run_demo

    run_demo(recipes=split_list(args.recipes), data=args.data,
             data_root=args.data_root, epochs=args.epochs, out=Path(args.out), overrides=args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
