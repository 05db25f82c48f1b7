"""`mimreg submit`: pretraining or fine-tuning on a SLURM cluster through submitit (the extra `mimreg[slurm]`).

One task per GPU. Each task exports the torch.distributed environment submitit reads from SLURM
(MASTER_ADDR: the first node; MASTER_PORT: from the job id; RANK, WORLD_SIZE, LOCAL_RANK) and runs
`pretrain` (or `eval finetune`) with `--resume`: a job requeued for any reason continues from the run's last checkpoint.

Time limit: SLURM sends submitit's signal (USR2) `signal_delay_s` before it. Every task turns it into
the loop's graceful stop (finish the step, agree on it, write a checkpoint); rank 0 then hands over to
submitit, which calls `TrainJob.checkpoint` (the same job: it resumes) and requeues the job.
SIGTERM (preemption, scancel) stops the same way with a checkpoint and ends the task; a job that
SLURM requeues then resumes.
"""

from __future__ import annotations

import dataclasses
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


class RequeueingJob:
    """What a submitit task runs: `train()` (a subclass's), with the time-limit signal turned into
    the loop's graceful stop and submitit's requeue of this same job, which resumes."""

    def __call__(self) -> dict:
        submitit = require_submitit()
        # SLURM gives each task the node's GPUs; the engine picks cuda:LOCAL_RANK among them
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        from mimreg import distributed
        from mimreg.console import say

        self._requeue_signal = submitit.JobEnvironment._usr_sig()
        self._submitit_handler = signal.signal(self._requeue_signal, self._stop_then_requeue)
        try:
            result = self.train()
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
            say(f"done: {result['steps']} steps; checkpoint {result['checkpoint']}")
        return result

    def train(self) -> dict:
        raise NotImplementedError

    def _stop_then_requeue(self, signum, frame) -> None:
        from mimreg.engine.stopping import GracefulStop

        stop = signal.getsignal(signal.SIGTERM)
        if isinstance(getattr(stop, "__self__", None), GracefulStop):
            stop(signum, frame)  # training: stop after this step with a checkpoint, then requeue
        else:  # not training (yet, or any more): nothing to save, requeue at once
            self._submitit_handler(signum, frame)

    def requeued(self) -> "RequeueingJob":
        """The job submitit runs next: a fresh copy of this one (it resumes)."""
        return dataclasses.replace(self)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on rank 0 before it requeues."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self.requeued())


@dataclass
class TrainJob(RequeueingJob):
    """Each task of `mimreg submit`, always resuming: `mimreg pretrain CONFIG --set ... --out OUT
    --resume`, or with `finetune` = the pretrained checkpoint, `mimreg eval finetune --checkpoint
    CKPT --out OUT --resume` with `settings` (fine-tuning field -> value)."""

    config: str
    overrides: list[str]
    out_dir: str
    finetune: str | None = None
    settings: dict = field(default_factory=dict)
    data: str | None = None
    data_root: str | None = None

    def train(self) -> dict:
        if self.finetune is None:
            from mimreg.config import load_config
            from mimreg.engine.loop import pretrain

            run = pretrain(load_config(self.config, self.overrides), self.out_dir, resume=True)
            return {"steps": run.steps, "halted": run.halted, "checkpoint": str(run.checkpoint)}
        from mimreg.engine.checkpoint import latest_checkpoint
        from mimreg.eval.finetune import finetune

        result = finetune(self.finetune, self.settings, data=self.data, data_root=self.data_root, out=self.out_dir,
                          resume=True)
        return {"steps": result.get("steps", result.get("step")), "halted": bool(result.get("halted")),
                "checkpoint": str(latest_checkpoint(Path(self.out_dir) / "checkpoints")), "top1": result.get("top1")}

    def requeued(self) -> "TrainJob":
        return dataclasses.replace(self, overrides=list(self.overrides), settings=dict(self.settings))


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

    @property
    def tasks(self) -> int:
        """Tasks (processes) per node: tasks_per_node, else one per GPU (at least one)."""
        return self.tasks_per_node or max(1, self.gpus_per_node)


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
    tasks = res.tasks
    specific = {"partition": res.partition, "account": res.account, "qos": res.qos,
                "constraint": res.constraint, "signal_delay_s": res.signal_delay_s}
    executor.update_parameters(name=name, nodes=res.nodes, gpus_per_node=res.gpus_per_node, tasks_per_node=tasks,
                               cpus_per_task=res.cpus_per_task, mem_gb=res.mem_gb, timeout_min=res.timeout_min,
                               **({f"slurm_{k}": v for k, v in specific.items()} if cluster == "slurm" else {}))
    return executor


def submit(config: str, overrides: list[str], out_dir: str | Path, res: Resources, *, resume: bool = False,
           cluster: str | None = None, log_dir: str | Path | None = None, finetune: str | None = None,
           data: str | None = None, data_root: str | None = None):
    """Check the settings and the run folder here, then submit; returns the submitit job.

    `config` is a pretraining recipe or YAML file, with `overrides` (KEY=VALUE); or `finetune` names
    the pretrained checkpoint to fine-tune, with `overrides` setting fine-tuning fields. A folder that
    holds checkpoints is refused unless `resume` (as the commands themselves do); the job itself
    always resumes, so that its requeues continue the run.
    """
    from mimreg.engine.run_folder import RunFolder

    out_dir = Path(out_dir).resolve()
    if finetune is None:
        job, name = _pretrain_job(config, overrides, out_dir, world=res.nodes * res.tasks)
    else:
        job, name = _finetune_job(finetune, overrides, out_dir, data, data_root)
    RunFolder(out_dir).checkpoint_to_resume(resume)  # the job checks what a resume may change
    folder = Path(log_dir) if log_dir else out_dir / "submitit"
    executor = build_executor(folder, res, cluster, name=name)
    return executor.submit(job)


def _pretrain_job(config: str, overrides: list[str], out_dir: Path, world: int) -> tuple[TrainJob, str]:
    from mimreg.config import load_config

    if Path(config).suffix in (".yaml", ".yml"):
        config = str(Path(config).resolve())  # the job may start in another folder
    cfg = load_config(config, overrides, world=world)  # a bad key fails here, not in the queue
    return TrainJob(str(config), list(overrides), str(out_dir)), f"mimreg-{cfg.recipe.replace('/', '-')}"


def _finetune_job(checkpoint: str, overrides: list[str], out_dir: Path, data, data_root) -> tuple[TrainJob, str]:
    import yaml

    from mimreg.eval.finetune_config import resolve_config
    from mimreg.eval.frozen import load_encoder

    settings = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise MimregError(f"--set {item!r}: give KEY=VALUE, a fine-tuning setting such as epochs=100")
        settings[key.strip()] = yaml.safe_load(value)
    encoder, _, _ = load_encoder(checkpoint)
    resolve_config(encoder.arch, encoder.depth, settings)  # a bad setting fails here, not in the queue
    job = TrainJob("finetune", list(overrides), str(out_dir), finetune=str(Path(checkpoint).resolve()),
                   settings=settings, data=data, data_root=data_root)
    return job, "mimreg-finetune"
