"""What the engine trains. A `Task` (pretraining, fine-tuning) gives the module to train, its
batches, its parameter groups, its settings and its evaluations; the engine (engine/loop.py) owns
everything else: the schedule, accumulation, precision, distribution, the finiteness check,
checkpoints, signals, the run-folder lock and resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import numpy as np
import torch
from torch import nn

from mimreg import distributed as dist

from mimreg.config import OptimConfig, TrainConfig


@dataclass
class StepResult:
    """total: the scalar to back-propagate (the objective plus the training losses of side parts such
    as the online probe). objective: what trains the encoder. terms: name -> detached scalar for the
    logs. events: records to write once, e.g. a gated regularizer switching on."""

    total: torch.Tensor
    objective: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)


class Task(Protocol):
    """One training job for the engine.

    `module(images, labels, *, epoch, monitor, generator) -> StepResult` is the step's forward;
    `data.loader(epoch, start, num_workers, pin_memory)` yields the epoch's micro-batches from
    micro-batch `start` on, and `data.batches.steps` counts them (whole accumulation cycles).
    `record` is the task's full configuration, stored in every checkpoint and compared on resume.
    """

    kind: str  # "pretrain" or "finetune": names the run in messages
    module: nn.Module
    data: object
    num_workers: int  # DataLoader workers of the loader pipeline
    optim: OptimConfig
    train: TrainConfig
    record: dict

    def parameter_groups(self, module: nn.Module) -> list[dict]:
        """The optimizer's groups; a group's `lr_scale` multiplies the scheduled lr (layer decay)."""

    def clipped_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters whose gradient norm `optim.clip_grad` bounds."""

    def on_step_end(self, progress: float) -> None:
        """After each optimizer step, `progress` = steps done / steps of the run (e.g. EMA targets)."""

    def step_facts(self, epoch: int) -> dict:
        """Values logged with each `train` record besides the losses (e.g. regularizer weights)."""

    def evaluate(self, epochs_done: int, last: bool) -> dict | None:
        """The evaluation after an epoch (every process calls it), or None when none is due."""

    def between_steps(self, step: int, total_steps: int) -> dict | None:
        """A measurement after optimizer step `step` (every process calls it; no collective), or None
        when none is due: it runs between steps, so the step itself keeps its one host sync."""

    def start_facts(self, world: int) -> tuple[dict, str]:
        """What the run states at its start: the `start` record's facts and one printed line."""

    def config_notes(self, world: int) -> list[str]:
        """Comment lines heading the run folder's config.yaml (e.g. the lr in force)."""

    @staticmethod
    def stored_record(saved: dict) -> dict:
        """A checkpoint's stored `record` in the form this release writes, to compare on resume."""


def seed_process(seed: int) -> None:
    """Seed this process's global torch and numpy streams (each process its own) before a task builds
    its module and data."""
    torch.manual_seed(seed + dist.rank())
    np.random.seed((seed + dist.rank()) % 2**32)
