"""`mimreg submit`: pretraining on a SLURM cluster through submitit (the extra `mimreg[slurm]`).

One task per GPU. Each task exports the torch.distributed environment submitit reads from SLURM
(MASTER_ADDR: the first node; MASTER_PORT: from the job id; RANK, WORLD_SIZE, LOCAL_RANK) and runs
`pretrain` with `--resume`: a job requeued for any reason continues from the run's last checkpoint.

Time limit: SLURM sends submitit's signal (USR2) `signal_delay_s` before it. Every task turns it into
the loop's graceful stop (finish the step, agree on it, write a checkpoint); rank 0 then hands over to
submitit, which calls `PretrainJob.checkpoint` (the same job: it resumes) and requeues the job.
SIGTERM (preemption, scancel) stops the same way with a checkpoint and ends the task; a job that
SLURM requeues then resumes.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from mimreg.errors import MimregError, RunInterrupted


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise MimregError("mimreg submit needs submitit: pip install 'mimreg[slurm]'") from None
    return submitit


@dataclass
class PretrainJob:
    """What each task of the job runs (pickled by submitit): `mimreg pretrain CONFIG --set ... --out
    OUT --resume`."""

    config: str
    overrides: list[str]
    out_dir: str
    _requeue_signal: object = field(default=None, init=False, repr=False, compare=False)
    _submitit_handler: object = field(default=None, init=False, repr=False, compare=False)

    def __call__(self) -> dict:
        submitit = require_submitit()
        # SLURM gives each task the node's GPUs; the loop picks cuda:LOCAL_RANK among them
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        from mimreg import distributed
        from mimreg.console import say
        from mimreg.config import load_config
        from mimreg.engine.loop import pretrain

        self._requeue_signal = submitit.JobEnvironment._usr_sig()
        self._submitit_handler = signal.signal(self._requeue_signal, self._stop_then_requeue)
        try:
            result = pretrain(load_config(self.config, self.overrides), self.out_dir, resume=True)
        except RunInterrupted as err:
            distributed.shutdown()  # every process stopped at the same step
            if err.signal_name == signal.Signals(self._requeue_signal).name:
                self._submitit_handler(self._requeue_signal, None)  # rank 0: requeue and exit
            raise
        finally:
            signal.signal(self._requeue_signal, self._submitit_handler)
        main = distributed.is_main_process()
        distributed.shutdown()
        if main:
            say(f"done: {result.steps} steps; checkpoint {result.checkpoint}")
        return {"steps": result.steps, "halted": result.halted, "checkpoint": str(result.checkpoint)}

    def _stop_then_requeue(self, signum, frame) -> None:
        from mimreg.engine.stopping import GracefulStop

        stop = signal.getsignal(signal.SIGTERM)
        if isinstance(getattr(stop, "__self__", None), GracefulStop):
            stop(signum, frame)  # training: stop after this step with a checkpoint, then requeue
        else:  # not training (yet, or any more): nothing to save, requeue at once
            self._submitit_handler(signum, frame)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on rank 0 before it requeues: the job to run next, this one (it resumes)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(PretrainJob(self.config, list(self.overrides), self.out_dir))


@dataclass
class Resources:
    """What the job asks SLURM for (cluster-specific keys are None when not given)."""

    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None  # default: one per GPU (at least one)
    cpus_per_task: int = 8
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120  # USR2 this long before the time limit: time to finish a step and checkpoint
    max_requeues: int = 10  # timeouts the job may be requeued after


def build_executor(folder: Path, res: Resources, cluster: str | None, name: str):
    """A submitit executor for `cluster` (slurm, local; None: slurm where sbatch exists, else local)."""
    submitit = require_submitit()
    cluster = cluster or submitit.AutoExecutor.which()
    if cluster not in ("slurm", "local"):
        raise MimregError(f"--executor {cluster!r}: choose slurm or local")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                         **{f"{cluster}_max_num_timeout": res.max_requeues})
    except RuntimeError as err:  # submitit's own: no srun on this machine
        raise MimregError(f"--executor slurm: {err} (use --executor local to run the tasks here)") from None
    tasks = res.tasks_per_node or max(1, res.gpus_per_node)
    specific = {"partition": res.partition, "account": res.account, "qos": res.qos,
                "constraint": res.constraint, "signal_delay_s": res.signal_delay_s}
    executor.update_parameters(name=name, nodes=res.nodes, gpus_per_node=res.gpus_per_node, tasks_per_node=tasks,
                               cpus_per_task=res.cpus_per_task, mem_gb=res.mem_gb, timeout_min=res.timeout_min,
                               **({f"slurm_{k}": v for k, v in specific.items()} if cluster == "slurm" else {}))
    return executor


def submit(config: str, overrides: list[str], out_dir: str | Path, res: Resources, *, resume: bool = False,
           cluster: str | None = None, log_dir: str | Path | None = None):
    """Check the config and the run folder here, then submit; returns the submitit job.

    A folder that holds checkpoints is refused unless `resume` (as `mimreg pretrain` does); the
    job itself always resumes, so that its requeues continue the run.
    """
    from mimreg.config import load_config
    from mimreg.engine.run_folder import RunFolder

    if Path(config).suffix in (".yaml", ".yml"):
        config = str(Path(config).resolve())  # the job may start in another folder
    cfg = load_config(config, overrides)  # a bad key fails here, not in the queue
    out_dir = Path(out_dir).resolve()
    RunFolder(out_dir).check_resumable(cfg, resume)
    folder = Path(log_dir) if log_dir else out_dir / "submitit"
    executor = build_executor(folder, res, cluster, name=f"mimreg-{cfg.recipe.replace('/', '-')}")
    return executor.submit(PretrainJob(str(config), list(overrides), str(out_dir)))
