"""The `mimreg study` subcommand (mimreg.cli adds it to its parser)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXECUTORS = ("local", "slurm", "submitit-local")


def add_study_parser(sub) -> None:
    p = sub.add_parser("study", help="run a grid of recipes x overrides x seeds, with evaluations, into one folder",
                       description="Run a study file (recipes x override axes x seeds, and the evaluations of each "
                                   "finished run). Re-running skips what is done and resumes what was interrupted.")
    p.add_argument("study", help="the study .yaml file")
    p.add_argument("--out", help="study folder (default studies/<file name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (e.g. --set data.root=~/data); give the same on every "
                        "re-run")
    p.add_argument("--dry-run", action="store_true",
                   help="print the grid, the run count and an estimated time (measures one epoch per setting "
                        "not trained yet), and run nothing")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine, --parallel runs at a time; slurm: one job array through submitit "
                        "(pip install 'mimreg[slurm]'); submitit-local: that array run here by submitit")
    p.add_argument("--parallel", type=int, help="runs at a time (default: the study's run.parallel, else "
                                                "cores / --threads, or one per GPU)")
    p.add_argument("--threads", type=int, help="CPU threads (pinned cores) per run (default: run.threads, else 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="cpu, or cuda: one run per GPU (default: run.device)")
    slurm = p.add_argument_group("slurm (as mimreg submit; one array element per run)")
    slurm.add_argument("--gpus-per-node", type=int, default=1)
    slurm.add_argument("--cpus-per-task", type=int, default=8)
    slurm.add_argument("--mem-gb", type=float)
    slurm.add_argument("--timeout", type=int, default=60, help="time limit of one element in minutes")
    for name in ("partition", "account", "qos", "constraint"):
        slurm.add_argument(f"--{name}")
    slurm.add_argument("--signal-delay", type=int, default=120,
                       help="seconds before the time limit at which a run checkpoints and requeues")
    slurm.add_argument("--max-requeues", type=int, default=10)
    slurm.add_argument("--log-dir", help="submitit's logs and pickles (default STUDY_DIR/submitit)")
    slurm.add_argument("--wait", action="store_true", help="wait for the array to end (always with submitit-local)")
    p.set_defaults(run=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from mimreg.study.run import grid_lines, pending_points, record_study_file
    from mimreg.study.spec import load_study

    study = load_study(args.study, extra=args.overrides)
    study_dir = Path(args.out) if args.out else Path("studies") / Path(args.study).stem
    settings = study.run
    threads = args.threads or settings.threads
    device = args.device or settings.device
    parallel = args.parallel or settings.parallel
    todo, finished = pending_points(study, study_dir)
    print("\n".join(grid_lines(study, study_dir)))
    print(f"{len(study.points)} runs ({len(finished)} finished, {len(todo)} to run), "
          f"{len(study.evaluations)} evaluation(s) each; folder {study_dir}")
    if args.dry_run:
        return dry_run(study, study_dir, todo, parallel, threads, device)
    if not todo:
        print("nothing to do: every run and evaluation is finished")
        return 0
    record_study_file(study, study_dir)
    if args.executor == "local":
        return run_here(study, study_dir, todo, finished, parallel, threads, device)
    return run_array(args, study, study_dir, todo, parallel, device)


def dry_run(study, study_dir: Path, todo, parallel, threads, device) -> int:
    from mimreg.study.estimate import estimate
    from mimreg.study.local import make_slots

    import torch

    slots = make_slots(parallel, threads, device)
    torch.set_num_threads(threads)  # measured as a study worker runs
    total = estimate(study, study_dir, todo, device, echo=lambda line: print(line, flush=True))
    print(f"estimated pretraining time: {duration(total)} of runs, {duration(total / len(slots))} on "
          f"{len(slots)} slot(s) of {threads} thread(s) (evaluations not included)")
    return 0


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def run_here(study, study_dir: Path, todo, finished, parallel, threads, device) -> int:
    from mimreg.study.local import make_slots, run_local
    from mimreg.study.run import summary_lines

    slots = make_slots(parallel, threads, device)
    print(f"running {len(todo)} run(s), {len(slots)} at a time with {threads} thread(s) each", flush=True)
    outcomes = run_local(study, study_dir, todo, slots, device, echo=lambda line: print(line, flush=True))
    print("\n".join(summary_lines(outcomes, finished)))
    print(f"statistics over seeds: mimreg results {study_dir} --group-by")
    return 0 if all(o.result == "done" for o in outcomes) and len(outcomes) == len(todo) else 1


def run_array(args, study, study_dir: Path, todo, parallel, device) -> int:
    from mimreg.slurm import Resources
    from mimreg.study.array import submit_array

    res = Resources(nodes=1, gpus_per_node=args.gpus_per_node if device == "cuda" else 0, tasks_per_node=1,
                    cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, timeout_min=args.timeout,
                    partition=args.partition, account=args.account, qos=args.qos, constraint=args.constraint,
                    signal_delay_s=args.signal_delay, max_requeues=args.max_requeues)
    cluster = "local" if args.executor == "submitit-local" else "slurm"
    jobs = submit_array(study.path, study_dir, [p.name for p in todo], res, cluster=cluster, parallel=parallel,
                        device="cuda" if device == "cuda" else "cpu",
                        log_dir=Path(args.log_dir) if args.log_dir else None, overrides=study.extra)
    print(f"submitted job array {jobs[0].job_id.split('_')[0]} with {len(jobs)} element(s) "
          f"(logs in {jobs[0].paths.folder})", flush=True)
    if not (args.wait or cluster == "local"):
        return 0
    failed = 0
    for point, job in zip(todo, jobs):
        try:
            job.result()
            print(f"done {point.name}")
        except Exception as err:  # one element's failure is reported; the others' results still count
            failed += 1
            print(f"failed {point.name}: {str(err).strip().splitlines()[-1] if str(err).strip() else err}")
    return 1 if failed else 0
