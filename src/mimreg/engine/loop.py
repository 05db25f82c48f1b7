"""The one training engine, for pretraining and fine-tuning alike.

`pretrain` and `eval.finetune.finetune` build a task (engine/task.py) and hand it to `run_task`,
which sets up the run folder (its lock, config.yaml, resume) and runs a `Trainer`, whose methods are
the loop's parts: one epoch, one step, the epoch's end, a checkpoint.

Host synchronisations per optimizer step (each stalls a GPU): one, where the processes agree that
every micro-step's loss was finite and whether any was asked to stop (`_agree_finite_and_stop`);
plus, only for regularizers gated on the reconstruction loss, the gate's comparison. Logging reads
its running means every `train.log_every` steps, the progress bar the loss at most twice a second.
The monitors (k-NN after epochs, RankMe / alpha-ReQ every `train.rep_monitor_every` steps) run
between steps, outside the step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from mimreg import distributed as dist
from mimreg.config import Config
from mimreg.console import say
from mimreg.devices import local_device, resolve_device
from mimreg.engine.checkpoint import load_checkpoint, non_finite_entries, rng_state, save_checkpoint, set_rng_state
from mimreg.engine.compiled_step import step_model
from mimreg.engine.metrics import MetricsWriter, RunningMeans
from mimreg.engine.pretrain_task import PretrainTask
from mimreg.engine.resume_rules import resume_changes
from mimreg.engine.run_folder import RunFolder
from mimreg.engine.schedule import build_optimizer, learning_rate, lr_at, lr_hint, set_lr, set_weight_decay, weight_decay_at
from mimreg.engine.stopping import GracefulStop
from mimreg.engine.strategy import Strategy
from mimreg.engine.task import StepResult, Task
from mimreg.errors import ConfigError, NonFiniteLossError, RunInterrupted
from mimreg.plugins import refuse_unconsented
from mimreg.run_length import step_counts


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path | None
    steps: int
    halted: bool  # stopped by train.halt_after_steps before the last epoch
    last_metrics: dict


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """A seed for the mask noise of one micro-step: the masks depend only on (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])


def pretrain(cfg: Config, run_dir: str | Path, resume: bool = False) -> RunResult:
    """Pretrain from `cfg` into `run_dir`, or continue the run there with `resume`."""
    device = join_processes(cfg.train.device, key="train.device", timeout_s=cfg.train.dist_timeout_s)
    found = checkpoint_to_resume(run_dir, resume)
    return run_task(PretrainTask(cfg, device, fresh=found is None), run_dir, resume, found, device)


def join_processes(device: str, key: str, timeout_s: float | None) -> torch.device:
    """The device this process trains on, after joining the process group torchrun describes
    (`timeout_s`: how long a collective waits for a silent process)."""
    wanted = resolve_device(device, key=key)
    dist.init_from_env(wanted.type, timeout_s)
    return local_device(wanted, dist.is_distributed())


def checkpoint_to_resume(run_dir: str | Path, resume: bool) -> Path | None:
    """The checkpoint a run in `run_dir` continues from (None: it starts), as the main process, which
    writes the checkpoints, sees the folder; a folder with checkpoints is refused without `resume`."""
    return dist.decided_by_main(lambda: RunFolder(run_dir).checkpoint_to_resume(resume))


def run_task(task: Task, run_dir: str | Path, resume: bool, found: Path | None, device: torch.device) -> RunResult:
    """Train `task` into `run_dir`, or continue the run there from `found` (`checkpoint_to_resume`;
    read once). Everything is built before the folder is touched, so a task that cannot run leaves
    no trace. SIGTERM / SIGINT / SIGHUP stop the run after the current step with a checkpoint."""
    folder = RunFolder(run_dir)
    state = load_checkpoint(found, map_location=device) if found is not None else None
    changes = _resume_changes(task, state, found) if state is not None else {}
    trainer = Trainer(task, device)
    main = dist.is_main_process()
    if main:
        folder.open()
    try:
        if main:
            if resume and found is None:
                say(f"--resume: no checkpoint in {folder.checkpoints}; starting from scratch")
            folder.write_config(task.record, notes=task.config_notes(dist.world_size()))
        if state is not None:
            trainer.restore(state, found, changes)
        if main:
            folder.truncate_metrics(trainer.step)
        with GracefulStop() as stop:
            result = trainer.run(folder, stop, changes)
    finally:
        folder.close()
    dist.barrier()  # the main process has written the last checkpoint and summary when any process returns
    return result


def _resume_changes(task: Task, state: dict, path: Path) -> dict:
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"checkpoint {path} holds no run config: it was not written by mimreg; start a new run "
                          "with --out NEW_FOLDER")
    if not {"world", "rng_ranks", "means"} <= set(state):
        raise ConfigError(f"checkpoint {path} was written by an earlier mimreg, without what an exact resume needs "
                          "(its number of processes, random streams and running means); evaluate or export it, "
                          "or start a new run with --out NEW_FOLDER")
    # the modules the user's own config names are imported by now; the checkpoint may not add others
    refuse_unconsented(saved.get("imports") or [], f"checkpoint {path}", "resume with --import MODULE for "
                       f"each module you trust, or with the run's own {path.parent.parent / 'config.yaml'}")
    return resume_changes(task.stored_record(saved), task.record, saved_world=int(state["world"]),
                          world=dist.world_size())


class Trainer:
    """The task's module (whose state the checkpoints hold), its forward (the same module, or its
    DDP wrapper, or either compiled), optimizer, counters, and the loop over them."""

    def __init__(self, task: Task, device: torch.device):
        self.task, self.device = task, device
        self.optim, self.train = task.optim, task.train
        self.world, self.rank, self.main = dist.world_size(), dist.rank(), dist.is_main_process()
        self.strategy = Strategy(task.train, device, task.optim.name)  # train.strategy: ddp or fsdp
        self.module = task.module
        self.forward = step_model(self.strategy.wrap(self.module), task.train, device)
        self.optimizer = build_optimizer(task.parameter_groups(self.module), task.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=task.train.precision == "fp16" and device.type == "cuda")
        self.autocast = _autocast(task.train.precision, device)

        self.accum = task.optim.accum_steps
        self.steps_per_epoch, self.warmup_steps, self.total_steps = step_counts(
            task.data.batches.size, task.optim.batch_size, self.world, self.accum, task.train.epochs,
            task.optim.warmup_epochs)  # the images the loader cuts into batches
        if self.steps_per_epoch < 1:
            raise ConfigError(f"one epoch of {task.data.num_images} images gives no optimizer step at batch "
                              f"{task.optim.batch_size} x accum {self.accum} x {self.world} processes")
        self.schedule_steps = int(round(self.total_steps * task.optim.schedule_stretch))
        self.base_lr = learning_rate(task.optim, self.world)
        self.step = 0
        self.interval, self.epoch_means = RunningMeans(), RunningMeans()
        self.last_metrics: dict = {}
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------ state
    def restore(self, state: dict, path: Path, changes: dict) -> None:
        self.strategy.load_model(self.module, state["model"], path)
        self.strategy.load_optimizer(self.module, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        streams = state["rng_ranks"]  # each process's own (drop path differs per process)
        set_rng_state(streams[self.rank] if self.rank < len(streams) else streams[0])
        self.step = state["step"]
        self.interval.load_state_dict(state["means"]["interval"], self.device)
        self.epoch_means.load_state_dict(state["means"]["epoch"], self.device)
        self.last_checkpoint = path
        if self.main:
            say(f"resuming from {path} at step {self.step} (epoch {self.step // self.steps_per_epoch})")
            for key, (before, now) in changes.items():
                say(f"--resume changes {key}: {before} -> {now} from step {self.step} on")

    def save_checkpoint(self, folder: RunFolder) -> Path | None:
        """Write ckpt_<step>.pt (main process), never with non-finite weights or optimizer state."""
        payload = {"model": self.strategy.model_state(self.module),
                   "optimizer": self.strategy.optimizer_state(self.module, self.optimizer),
                   "scaler": self.scaler.state_dict(), "rng_ranks": dist.gather_objects(rng_state()),
                   "world": self.world, "step": self.step, "epoch": self.step // self.steps_per_epoch,
                   "config": self.task.record,
                   "means": {"interval": self.interval.state_dict(), "epoch": self.epoch_means.state_dict()}}
        # under FSDP the main process alone holds the gathered state: its verdict is everyone's
        bad = dist.broadcast_from_main(non_finite_entries({"model": payload["model"],
                                                           "optimizer": payload["optimizer"]["state"]}))
        if bad:
            raise NonFiniteLossError(
                f"after step {self.step} {len(bad)} tensors of the model or optimizer are NaN or inf (e.g. "
                f"{', '.join(bad[:3])}); no checkpoint written, the last good one ({self.last_checkpoint}) "
                f"is kept. {lr_advice(self.optim)}")
        if self.main:
            self.last_checkpoint = save_checkpoint(folder.checkpoints, self.step, payload, self.train.keep_last)
        return self.last_checkpoint

    # ------------------------------------------------------------ the loop
    def run(self, folder: RunFolder, stop: GracefulStop, changes: dict | None = None) -> RunResult:
        writer = MetricsWriter(folder.path, self.main, self.train.loggers_in_force(), self.task.record,
                               self.train.wandb_mode)
        self.last_metrics = folder.read_summary().get("last_metrics", {}) if self.step else {}
        halted = False
        try:
            if self.step == 0:
                self.announce(writer)
            elif changes:
                writer.write({"kind": "resume", "step": self.step, "world": self.world, "changed": changes})
            self.module.train()
            for epoch in range(self.step // self.steps_per_epoch, self.train.epochs):
                reason = self.train_epoch(epoch, folder, writer, stop)
                if reason == "halt":
                    halted = True
                    break
                if reason is not None:
                    self.write_summary(folder, halted=False, stopped_by=reason)
                    raise RunInterrupted(reason, self.step, self.last_checkpoint)
        finally:
            writer.close()
        self.write_summary(folder, halted=halted)
        return RunResult(folder.path, self.last_checkpoint, self.step, halted, self.last_metrics)

    def announce(self, writer: MetricsWriter) -> None:
        """The `start` record and the run's first printed line: what will run, at which lr."""
        facts, line = self.task.start_facts(self.world)
        data = self.task.data
        writer.write({"kind": "start", "images": data.num_images, "world": self.world,
                      "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                      "device": str(self.device), "pipeline": data.pipeline, **facts})
        if self.main:
            say(f"{line}; {self.train.epochs} epochs x {self.steps_per_epoch} steps on {self.device} x {self.world}")

    def train_epoch(self, epoch: int, folder: RunFolder, writer: MetricsWriter, stop: GracefulStop) -> str | None:
        """One epoch from the current step; returns why it stopped early ("halt", a signal name) or None.
        The loader yields whole accumulation cycles only (engine/data.py: EpochBatches)."""
        spe = self.steps_per_epoch
        first = self.step - epoch * spe
        loader = self.task.data.loader(epoch, first * self.accum, self.task.num_workers, self.device.type == "cuda")
        bar = _progress_bar(self.train.progress and self.main, spe, first, f"epoch {epoch + 1}/{self.train.epochs}")
        shown_at, micro, results = 0.0, 0, []
        try:
            for batch in loader:
                if batch.bad_files and self.main:
                    writer.write({"kind": "skipped_images", "step": self.step, "files": batch.bad_files})
                if micro == 0:
                    lr = self.set_schedule()  # once per optimizer step
                results.append(self.forward_backward(batch, epoch, micro, writer))
                micro += 1
                if micro < self.accum:
                    continue
                stop_agreed = _agree_finite_and_stop(results, self.step, stop, lr_advice(self.optim))
                objective, micro, results = results[-1].values[1], 0, []
                self.optimizer_step()
                if bar is not None:
                    bar.update(1)
                    if time.monotonic() - shown_at > 0.5:  # reading the loss syncs: at most twice a second
                        bar.set_postfix(loss=f"{float(objective):.4f}")
                        shown_at = time.monotonic()
                self.log_step(epoch, lr, writer)
                self.measure_between_steps(epoch, writer)
                if self.step % spe == 0:
                    self.end_epoch(epoch, writer)
                reason = self.stop_reason(stop_agreed, stop)
                every = self.train.ckpt_every_steps
                if reason is not None or self.step % spe == 0 or (every and self.step % every == 0):
                    self.save_checkpoint(folder)
                    reason = reason or self.stop_reason(False, stop)  # a signal during the write
                if reason is not None:
                    return reason
        finally:
            if bar is not None:
                bar.close()
        return None

    def set_schedule(self) -> float:
        o = self.optim
        lr = lr_at(self.step, base_lr=self.base_lr, min_lr=o.min_lr, warmup_steps=self.warmup_steps,
                   total_steps=self.schedule_steps)
        set_lr(self.optimizer, lr)
        if o.weight_decay_end is not None:
            set_weight_decay(self.optimizer, weight_decay_at(self.step, start=o.weight_decay, end=o.weight_decay_end,
                                                             total_steps=self.schedule_steps))
        return lr

    def forward_backward(self, batch, epoch: int, micro: int, writer: MetricsWriter) -> LoggedValues:
        """One micro-step: forward and backward; DDP averages the gradients on the cycle's last one.
        Returns a copy of its values: CUDA graphs (compile_mode reduce-overhead) overwrite the step's
        outputs at the next micro-step, before the cycle's finiteness check reads them."""
        images = to_device(batch.images, self.device)
        labels = batch.labels.to(self.device, non_blocking=True)
        monitor = self.step % self.train.monitor_every == 0 and micro == 0
        seed = step_seed(self.train.seed, self.rank, self.step, micro)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        sync = micro == self.accum - 1
        with (contextlib.nullcontext() if sync else self.strategy.no_sync()):
            with self.autocast():
                result = self.forward(images, labels, epoch=epoch, monitor=monitor, generator=generator)
            self.scaler.scale(result.total / self.accum).backward()
        for event in result.events:  # e.g. a gate opening: a record, and its message printed
            writer.write({"step": self.step, **{k: v for k, v in event.items() if k != "message"}})
            if self.main and "message" in event:
                say(f"step {self.step}: {event['message']}")
        terms = {"loss": result.objective, **result.terms}
        self.interval.add(terms)
        self.epoch_means.add(terms)
        return LoggedValues.of(result)

    def optimizer_step(self) -> None:
        if self.optim.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(list(self.task.clipped_parameters()), self.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.task.on_step_end(self.step / self.total_steps)

    def log_step(self, epoch: int, lr: float, writer: MetricsWriter) -> None:
        if self.step % self.train.log_every == 0 or self.step % self.steps_per_epoch == 0:
            self.last_metrics = self.interval.read()
            writer.write({"kind": "train", "step": self.step, "epoch": epoch, "lr": lr, **self.task.step_facts(epoch),
                          **self.last_metrics})

    def measure_between_steps(self, epoch: int, writer: MetricsWriter) -> None:
        """The task's measurement after this step, if due (e.g. RankMe): written before the step's
        checkpoint, as the epoch's record, so that a resume neither repeats nor loses it."""
        measured = self.task.between_steps(self.step, self.total_steps)
        if measured is not None:
            writer.write({"step": self.step, "epoch": epoch, **measured})

    def end_epoch(self, epoch: int, writer: MetricsWriter) -> None:
        """The epoch's record, its evaluation and its one printed line; written before the epoch's
        checkpoint, so a run resumed from that checkpoint neither repeats nor loses them."""
        summary = self.epoch_means.read()
        writer.write({"kind": "epoch", "step": self.step, "epoch": epoch, **summary})
        evaluation = self.task.evaluate(epoch + 1, last=epoch + 1 == self.train.epochs)
        if evaluation is not None:
            writer.write({"step": self.step, "epoch": epoch, **evaluation})
            summary.update({k: v for k, v in evaluation.items() if k != "kind"})
            self.module.train()
        if self.main:
            with tqdm.external_write_mode():  # above a progress bar, if one is shown
                say(f"epoch {epoch + 1}/{self.train.epochs} step {self.step}: {format_terms(summary)}")

    def stop_reason(self, stop_agreed: bool, stop: GracefulStop) -> str | None:
        halt = self.train.halt_after_steps
        # one process stops as soon as it is asked; several stop at the step they agreed on
        if stop_agreed or (stop.requested and not dist.is_distributed()):
            return stop.signal_name or "SIGTERM"  # another process received it
        if halt is not None and self.step >= halt and self.step < self.total_steps:
            return "halt"
        return None

    def write_summary(self, folder: RunFolder, halted: bool, stopped_by: str | None = None) -> None:
        if self.main:
            folder.write_summary({"steps": self.step, "halted": halted, "stopped_by": stopped_by,
                                  "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                                  "last_metrics": self.last_metrics})


def format_terms(terms: dict[str, float]) -> str:
    """`loss 0.5123, rec 0.5100, ... | probe/ce 2.01, probe/acc 31.2`: the objective's terms first."""
    side_keys = ("probe/", "aux/", "knn/")
    own = [f"{k} {v:.4f}" for k, v in terms.items() if not k.startswith(side_keys)]
    side = [f"{k} {v:.4g}" for k, v in terms.items() if k.startswith(side_keys)]
    return ", ".join(own) + (" | " + ", ".join(side) if side else "")


def lr_advice(optim) -> str:
    return f"Try {lr_hint(optim)} (a --resume may change it), optim.clip_grad, or train.precision fp32"


def to_device(images, device: torch.device):
    if isinstance(images, list):
        return [view.to(device, non_blocking=True) for view in images]
    return images.to(device, non_blocking=True)


def _progress_bar(wanted: bool, total: int, initial: int, desc: str):
    import sys

    if not (wanted and sys.stderr.isatty()):
        return None
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _autocast(precision: str, device: torch.device):
    """A factory of the context a training forward runs in: nothing for fp32, else autocast."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type != "cpu":
        return lambda: torch.autocast(device_type=device.type, dtype=dtype)
    return lambda: _cpu_bf16_context(dtype)


@contextlib.contextmanager
def _cpu_bf16_context(dtype: torch.dtype):
    """bf16 autocast on CPU with attention on torch's math path: the fused (flash) CPU kernel's
    backward is 5-9x slower in bf16 than in fp32 at ViT sizes and made the bf16 step slower than the
    fp32 one; the math path computes in fp32 inside, as accurate as the fused kernel
    (benchmarks/results/bf16_cpu.txt)."""
    with torch.autocast(device_type="cpu", dtype=dtype), sdpa_kernel([SDPBackend.MATH]):
        yield


@dataclass
class LoggedValues:
    """A micro-step's total, objective and terms, copied into one vector (names: the terms')."""

    names: list[str]
    values: torch.Tensor  # (2 + len(names),): total, objective, the terms

    @classmethod
    def of(cls, result: StepResult) -> "LoggedValues":
        parts = [result.total, result.objective, *result.terms.values()]
        return cls(list(result.terms), torch.stack([v.detach().float().reshape(()) for v in parts]))


def _agree_finite_and_stop(results: list[LoggedValues], step: int, stop: GracefulStop, advice: str) -> bool:
    """Raise NonFiniteLossError naming every non-finite term of the step's micro-steps (before the
    optimizer applies their gradients); return whether any process was asked to stop. One collective
    (the step's one host sync) for both, so every process stops together."""
    finite = torch.stack([torch.isfinite(r.values).all() for r in results]).all().float()
    # a fill on the device, not a copy from the host (which would wait for the step's queued work)
    flags = torch.stack([finite, finite.new_full((), 0.0 if stop.requested else 1.0)])
    finite_everywhere, none_stopping = dist.all_reduce_min(flags).tolist()
    if finite_everywhere:
        return not none_stopping
    terms = [dict(zip(r.names, r.values[2:].tolist())) for r in results]
    bad = sorted({name for t in terms for name, v in t.items() if not math.isfinite(v)})
    if not bad and bool(finite):
        bad = ["(on another process)"]
    elif not bad:
        shown = ", ".join(f"{k}={v:.3g}" for t in terms for k, v in t.items())
        bad = [f"the sum of finite terms overflowed ({shown})"]
    raise NonFiniteLossError(f"non-finite loss at step {step} in term(s) {bad}; the last good checkpoint "
                             f"is kept. {advice}")
