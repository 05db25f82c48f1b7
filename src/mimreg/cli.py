"""`mimreg` command line: pretrain, submit, study, eval, results, analyze, report, export, recipes, demo."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
import warnings
from pathlib import Path

from mimreg import __version__
from mimreg.cli_eval import (add_checkpoint_args, add_eval_parser, add_import_args, add_results_parser,
                             import_consented, is_main_process, resume_command)
from mimreg.cli_study import add_study_parser
from mimreg.console import guarded_output, say
from mimreg.errors import MimregError, RunInterrupted


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given: what `resume_command` repeats
    with guarded_output(), warnings.catch_warnings():  # a closed pipe or terminal never stops a run
        warnings.showwarning = one_line_warning
        return run_command(args)


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI's other messages: one line, without the source line that raised it."""
    say(f"warning: {message}", file=sys.stderr)


def run_command(args) -> int:
    try:
        return args.run(args) or 0
    except RunInterrupted as err:
        if is_main_process():
            out = Path(err.checkpoint).parent.parent if err.checkpoint else None
            print(f"{err}; continue with:\n  {resume_command(args.argv, out)}", file=sys.stderr)
        return 128 + signal.Signals[err.signal_name].value
    except KeyboardInterrupt:
        if is_main_process():
            print(f"interrupted; continue with:\n  {resume_command(args.argv, None)}", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line unless --debug
        err = named_timeout(err)
        if args.debug:
            traceback.print_exc()
        else:
            print(f"error: {one_line(err)}", file=sys.stderr)
            if not isinstance(err, MimregError):
                print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2


def named_timeout(err: Exception) -> Exception:
    """A collective that timed out outside mimreg.distributed (DDP's gradient all-reduce, FSDP's
    all-gathers) as the error mimreg.distributed gives, naming the rank(s) that stopped answering."""
    if "torch.distributed" not in sys.modules:  # no process group could have timed out
        return err
    from mimreg import distributed

    if not (distributed.is_timeout(err) and distributed.is_distributed()):
        return err
    return MimregError(distributed.timeout_message("a DDP or FSDP collective"))


def one_line(err: Exception) -> str:
    """The error as one line. Errors raised in DataLoader workers carry the worker's traceback in
    their message: its last line is the message. Any other multi-line message is joined."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "in DataLoader worker process" in text:
        message = lines[-1]
    else:
        message = " ".join(lines) if lines else type(err).__name__
    return message if isinstance(err, MimregError) else f"{type(err).__name__}: {message}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimreg", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"mimreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain an encoder from a recipe or YAML config")
    p.add_argument("config", help="recipe name (e.g. u-mae, cifar10-cpu/mu-mae) or a .yaml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.blr=1e-3 --set regularizers.magma.weight=2")
    p.add_argument("--out", help="run folder (default runs/<recipe>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--import", dest="overrides", action="append", metavar="MODULE", type=lambda m: f"imports+='{m}'",
                   help="import a module (or .py file) that @registers a method or regularizer; repeatable "
                        "(the same as --set imports+=MODULE)")
    p.set_defaults(run=cmd_pretrain)

    p = sub.add_parser("submit", help="pretrain or fine-tune on a SLURM cluster through submitit "
                                      "(pip install 'mimreg[slurm]')")
    p.add_argument("config", help="recipe name or .yaml file, as for pretrain; or `finetune` with --checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides; with finetune: fine-tuning settings (epochs=100, layer_decay=0.65, ...)")
    p.add_argument("--checkpoint", help="finetune: the pretrained run folder or ckpt_*.pt")
    p.add_argument("--data", help="finetune: dataset name (default: the one it was pretrained on)")
    p.add_argument("--data-root", help="finetune: dataset folder")
    p.add_argument("--out", required=True, help="run folder (on a file system every node sees)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (requeued jobs always resume)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, help="processes per node (default: one per GPU)")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--mem-gb", type=float)
    p.add_argument("--timeout", type=int, default=60, help="time limit of one job in minutes")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit at which the run checkpoints and requeues")
    p.add_argument("--max-requeues", type=int, default=10, help="time-outs after which the job is not requeued")
    p.add_argument("--executor", choices=["auto", "slurm", "local"], default="auto",
                   help="auto: slurm where sbatch exists; local runs the tasks on this machine")
    p.add_argument("--log-dir", help="submitit's logs and pickles (default OUT/submitit)")
    p.add_argument("--wait", action="store_true", help="wait for the job to end (always with --executor local)")
    p.set_defaults(run=cmd_submit)

    add_study_parser(sub)
    add_eval_parser(sub)
    add_results_parser(sub)

    p = sub.add_parser("analyze", help="pictures of an encoder (reconstructions, attention, patch PCA, PaCMAP/t-SNE, "
                                       "curves, spectrum), effective rank and Davies-Bouldin index")
    add_checkpoint_args(p)
    p.add_argument("--pictures", help="comma-separated subset of reconstructions,attention,pca,embeddings,curves,"
                                      "spectrum (default: all)")
    p.add_argument("--embeddings", help="comma-separated 2-D maps: pacmap,tsne,umap (default: pacmap when "
                                        "installed, and tsne)")
    p.set_defaults(run=cmd_analyze)

    p = sub.add_parser("report", help="one self-contained HTML page comparing run folders")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders (the --out of mimreg pretrain), or a study folder (mimreg study --out)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--title", help="page title (default: the run names, or the study folder's)")
    p.add_argument("--analyze", action=argparse.BooleanOptionalAction, default=None,
                   help="analyse runs that have no analysis.json yet (default: yes for run folders, no for a "
                        "study folder, whose many runs would take long)")
    p.add_argument("--group-by", nargs="?", const="", metavar="KEY[,KEY...]",
                   help="open the page with the runs grouped by these config keys (alone: every setting that "
                        "differs but the seed; the default for a study folder): points per seed, mean and 95%% "
                        "interval, differences to the baseline, curves per group")
    p.add_argument("--baseline", metavar="GROUP",
                   help="the group others are compared to (KEY=VALUE or its label; default: the first run's); "
                        "implies --group-by")
    add_import_args(p)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("export", help="export the encoder for timm or the Hugging Face hub")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", default="timm", choices=["timm", "hf"],
                   help="timm: OUT.pth state dict + OUT.json arguments; hf: folder OUT with model.safetensors "
                        "(encoder, and the linear probe's head when the run has one), timm's config.json and a "
                        "model card README.md")
    p.add_argument("--out", required=True, help="output .pth file (--format timm) or folder (--format hf)")
    add_import_args(p)
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("recipes", help="list recipes, presets and regularizers")
    p.add_argument("--papers", action="store_true",
                   help="instead: the seed papers' table rows, each with its command, number, protocol and cost")
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


def cmd_pretrain(args) -> int:
    from mimreg import distributed
    from mimreg.config import load_config
    from mimreg.engine.loop import pretrain
    from mimreg.engine.run_folder import check_out_folder

    cfg = load_config(args.config, args.overrides)
    args.out_dir = Path(args.out) if args.out else Path("runs") / cfg.recipe.replace("/", "-")
    check_out_folder(args.out_dir)  # at once, before the data and model are built
    try:
        result = pretrain(cfg, args.out_dir, resume=args.resume)
    except RunInterrupted:
        distributed.shutdown()  # every process stopped at the same step
        raise
    distributed.shutdown()  # under torchrun: leave the process group together (a no-op otherwise)
    if not is_main_process():
        return 0
    if result.halted:
        print(f"halted at step {result.steps} (train.halt_after_steps) with checkpoint {result.checkpoint}; "
              f"continue with:\n  {resume_command(args.argv, args.out_dir)}")
    else:
        print(f"done: {result.steps} steps; checkpoint {result.checkpoint}")
    return 0


def cmd_submit(args) -> int:
    from mimreg.slurm import Resources, submit

    res = Resources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                    cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, timeout_min=args.timeout,
                    partition=args.partition, account=args.account, qos=args.qos, constraint=args.constraint,
                    signal_delay_s=args.signal_delay, max_requeues=args.max_requeues)
    cluster = None if args.executor == "auto" else args.executor
    if (args.config == "finetune") != (args.checkpoint is not None):
        raise MimregError("mimreg submit finetune needs --checkpoint RUN (the encoder to fine-tune), and "
                          "--checkpoint goes with finetune only")
    job = submit(args.config, args.overrides, args.out, res, resume=args.resume, cluster=cluster,
                 log_dir=args.log_dir, finetune=args.checkpoint, data=args.data, data_root=args.data_root)
    print(f"submitted job {job.job_id}: {args.out} (logs in {job.paths.folder})", flush=True)
    if args.wait or type(job).__name__ == "LocalJob":
        result = job.results()[0]  # rank 0's; raises the job's own error
        print(f"job {job.job_id} done: {result['steps']} steps; checkpoint {result['checkpoint']}")
    return 0


def cmd_analyze(args) -> int:
    from mimreg.commands import analyze

    from mimreg.analysis.analyze import PICTURES

    import_consented(args, [args.checkpoint])
    pictures = split_list(args.pictures) if args.pictures else PICTURES
    embeddings = split_list(args.embeddings) if args.embeddings else None
    analyze(args.checkpoint, data=args.data, data_root=args.data_root, test_images=args.test_images,
            device=args.device, pictures=pictures, embeddings=embeddings)
    return 0


def cmd_report(args) -> int:
    from mimreg.analysis.report import write_report
    from mimreg.engine.checkpoint import latest_checkpoint
    from mimreg.eval.results import run_folders

    runs = run_folders(args.runs)
    study = [Path(p).name for p in args.runs if Path(p) not in runs]  # study folders, which name their runs
    import_consented(args, [run for run in runs if latest_checkpoint(Path(run) / "checkpoints")])
    keys = [k.strip() for k in (args.group_by or "").split(",") if k.strip()] or None
    title = args.title or (f"mimreg report: study {', '.join(study)}" if study else None)
    analyze = not study if args.analyze is None else args.analyze  # a study's many runs: only when asked
    path = write_report(runs, args.out, title=title, analyze_missing=analyze, group_by=keys, baseline=args.baseline,
                        seeds=bool(study) or args.group_by is not None or args.baseline is not None)
    print(f"report: {path}")
    return 0


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def cmd_export(args) -> int:
    from mimreg.commands import export_timm

    import_consented(args, [args.checkpoint])
    if args.format == "hf":
        from mimreg.hub_export import export_hf

        info = export_hf(args.checkpoint, args.out)
        head = f"the linear probe's head of {info['head']}" if info["head"] else "no head (no linear evaluation)"
        print(f"wrote {args.out} (model.safetensors with {head}, config.json, README.md); load it with:\n"
              f"  {info['usage']}")
        return 0
    info = export_timm(args.checkpoint, args.out)
    print(f"wrote {args.out}; load it with:\n  {info['usage']}")
    return 0


def cmd_recipes(args) -> int:
    import yaml

    from mimreg.config import RECIPES_DIR, preset_names, recipe_names
    from mimreg.methods import METHODS
    from mimreg.regularizers import REGULARIZERS

    if args.papers:
        from mimreg.recipes.papers import papers_table

        print(papers_table())
        return 0
    print("recipes (mimreg pretrain [PRESET/]RECIPE; default preset digits):")
    for name in recipe_names():
        text = yaml.safe_load((RECIPES_DIR / "methods" / f"{name}.yaml").read_text())
        print(f"  {name:<14} {text.get('description', '')}")
    print("presets (data, model, optimisation):")
    width = max(map(len, preset_names()))
    for name in preset_names():
        first = (RECIPES_DIR / "presets" / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"  {name:<{width}} {first}")
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
