"""Run one point of a study in this process: pretrain (resuming a run that was interrupted), then
every evaluation not done yet, recording each step in the study's ledger as it finishes."""

from __future__ import annotations

import time
from pathlib import Path

from mimreg.errors import RunInterrupted
from mimreg.study.ledger import PointLock, read_status, write_status
from mimreg.study.spec import Evaluation, Point

RUNS_DIR = "runs"


def run_dir_of(study_dir: Path, point: Point) -> Path:
    return Path(study_dir) / RUNS_DIR / point.name


def run_point(study_dir: Path, point: Point, evaluations: list[Evaluation], device: str = "auto",
              echo=print) -> str:
    """Pretrain and evaluate `point`; returns "done" or "halted" (train.halt_after_steps). Raises
    PointBusy when another process runs it, and the run's own error when it fails (recorded)."""
    with PointLock(study_dir, point.name):
        status = read_status(study_dir, point.name)
        began = time.time()
        status.state, status.error = "running", None
        status.overrides = list(point.overrides)
        write_status(study_dir, point.name, status)
        try:
            outcome = _pretrain_and_evaluate(study_dir, point, evaluations, device, status, echo)
        except (RunInterrupted, KeyboardInterrupt, SystemExit) as err:  # SIGTERM in training, or outside it
            status.state, status.error = "pending", f"interrupted: {err or type(err).__name__}"
            raise
        except BaseException as err:
            status.state, status.error = "failed", f"{type(err).__name__}: {err}".splitlines()[0]
            raise
        else:
            status.state = "done" if outcome == "done" else "pending"
            return outcome
        finally:
            status.minutes = round(status.minutes + (time.time() - began) / 60, 2)
            write_status(study_dir, point.name, status)


def _pretrain_and_evaluate(study_dir: Path, point: Point, evaluations: list[Evaluation], device: str, status,
                           echo) -> str:
    from mimreg.config import load_config
    from mimreg.engine.checkpoint import latest_checkpoint
    from mimreg.engine.loop import pretrain

    run_dir = run_dir_of(study_dir, point)
    if not status.pretrained:
        overrides = list(point.overrides) + ([f"train.device={device}"] if device != "auto" else [])
        cfg = load_config(point.recipe, overrides)
        result = pretrain(cfg, run_dir, resume=latest_checkpoint(run_dir / "checkpoints") is not None)
        if result.halted:
            return "halted"
        status.pretrained = True
        write_status(study_dir, point.name, status)
    for evaluation in evaluations:
        if evaluation.key not in status.evaluations:
            run_evaluation(evaluation, run_dir, device, echo)
            status.evaluations.append(evaluation.key)
            write_status(study_dir, point.name, status)
    return "done"


def run_evaluation(evaluation: Evaluation, run_dir: Path, device: str, echo=print) -> None:
    """One evaluation of the run in `run_dir`; its results go where `mimreg eval` puts them."""
    options = dict(evaluation.options)
    data = {"data": options.pop("data", None), "data_root": options.pop("data_root", None)}
    if evaluation.protocol == "analyze":
        from mimreg.analysis.analyze import PICTURES, analyze

        analyze(run_dir, pictures=options.get("pictures", PICTURES), test_images=options.get("test_images"),
                device=device, echo=echo, **data)
    elif evaluation.protocol == "finetune":
        from mimreg.eval.finetune import finetune

        finetune(run_dir, options.get("settings", {}), device=device, resume=True, echo=echo, **data)
    elif evaluation.protocol == "robustness":
        from mimreg.eval.evaluate import robustness

        robustness(run_dir, pool=options.get("pool", "cls"), train_images=options.get("train_images"),
                   test_images=options.get("test_images"), device=device, echo=echo, **data)
    else:
        from mimreg.eval.evaluate import DEFAULT_LINEAR_EPOCHS, evaluate

        pools = options.get("pools", options.get("pool", "cls"))
        evaluate(run_dir, evaluation.protocol.split("+"), pools=tuple(pools if isinstance(pools, list) else [pools]),
                 train_images=options.get("train_images"), test_images=options.get("test_images"),
                 linear_protocol=options.get("linear_protocol", "sweep"),
                 linear_epochs=options.get("epochs", DEFAULT_LINEAR_EPOCHS), device=device, echo=echo, **data)
