"""How the trainee is spread over processes, and how a checkpoint's state is gathered from it.

`ddp`: a full replica per process, gradients averaged (DistributedDataParallel).
`fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state
sharded over the processes, one all-gather unit per transformer block (encoder, EMA target encoder
and decoder blocks) and one for the rest (the root), so a process holds one block's full weights
at a time: what ViT-L/H need on GPUs of 40-80 GB. With gradient accumulation the gradients are
reduce-scattered at every micro-step and accumulate sharded (DDP's no_sync would keep a full copy).

Both write the same checkpoint: the full state dict of the trainee and torch.optim's own optimizer
format (parameters numbered in the optimizer's order), gathered on the main process through
torch.distributed.checkpoint's state-dict helpers. A checkpoint of either resumes under either, and
eval / export read it as any other.

In a single process there is nothing to replicate or shard: both strategies train the plain module.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimreg import distributed as dist
from mimreg.console import say
from mimreg.config import TrainConfig
from mimreg.engine.checkpoint import load_matching_state
from mimreg.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")


def set_grad_checkpointing(trainee: nn.Module, enable: bool = True) -> int:
    """Recompute every transformer block's activations in backward instead of storing them (encoders
    through timm's `set_grad_checkpointing` flag, the MAE decoder through its own); returns how many
    modules were switched. The loss and gradients are unchanged; memory falls, compute rises ~1/3."""
    switched = 0
    for module in trainee.modules():
        if hasattr(module, "set_grad_checkpointing") and hasattr(module, "blocks"):
            module.set_grad_checkpointing(enable)
            switched += 1
    return switched


class Strategy:
    """`wrap` the trainee for training (and `no_sync` its gradient averaging between the micro-steps
    of an accumulation cycle); `model_state` / `optimizer_state` gather a checkpoint's state
    (complete on the main process); `load_model` / `load_optimizer` put one back."""

    def __init__(self, cfg: TrainConfig, device: torch.device, optimizer: str = "adamw"):
        if cfg.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy: unknown value {cfg.strategy!r}; choose one of {list(STRATEGIES)}")
        self.sharded = cfg.strategy == "fsdp" and dist.is_distributed()
        self.cfg, self.device = cfg, device
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if self.sharded:
            refuse_unsharded_options(cfg, device, optimizer)

    def wrap(self, trainee: nn.Module) -> nn.Module:
        """The module to call: `trainee` itself in one process and under FSDP (whose sharding lives on
        the modules), else its DDP wrapper. BatchNorm layers become SyncBatchNorm in place."""
        if self.cfg.grad_checkpointing and not set_grad_checkpointing(trainee):
            raise ConfigError("train.grad_checkpointing: this model has no transformer blocks to checkpoint")
        if not dist.is_distributed():
            return trainee
        if self.cfg.sync_batchnorm:
            converted, note = dist.sync_batchnorm(trainee, self.device)
            assert converted is trainee  # torch converts the BatchNorm children in place
            if note and dist.is_main_process():
                say(note)
        if self.sharded:
            return shard(trainee)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(trainee, device_ids=ids)
        return self.ddp

    def no_sync(self):
        """Within an accumulation cycle: DDP keeps each process's gradients until the last micro-step
        (FSDP reduce-scatters at every micro-step and accumulates sharded)."""
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    # ------------------------------------------------------------ gathering
    def model_state(self, trainee: nn.Module) -> dict:
        """The full state dict; under FSDP on the main process only (empty elsewhere), on the CPU."""
        if not self.sharded:
            return trainee.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(trainee, options=_full_state_options())

    def optimizer_state(self, trainee: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """`optimizer.state_dict()` of the unsharded model; under FSDP on the main process only."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        by_name = get_optimizer_state_dict(trainee, optimizer, options=_full_state_options())
        if not dist.is_main_process():
            return {"state": {}, "param_groups": []}
        index = {name: i for i, name in enumerate(parameter_names(trainee, optimizer))}
        return {"state": {index[name]: value for name, value in by_name["state"].items()},
                "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                                 for group in by_name["param_groups"]]}

    # ------------------------------------------------------------ loading
    def load_model(self, trainee: nn.Module, state: dict, path: Path) -> None:
        """Load a full state dict (every process reads the whole checkpoint and keeps its shards)."""
        if not self.sharded:
            load_matching_state(trainee, state, path)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False)
        load_matching_state(trainee, state, path,
                            load=lambda full: set_model_state_dict(trainee, full, options=options))

    def load_optimizer(self, trainee: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = parameter_names(trainee, optimizer)
        by_name = {"state": {names[i]: value for i, value in state["state"].items()},
                   "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                    for group in state["param_groups"]]}
        set_optimizer_state_dict(trainee, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def shard(trainee: nn.Module) -> nn.Module:
    """FSDP2 in place: each transformer block its own unit (innermost first), then the root."""
    from torch.distributed.fsdp import fully_shard

    # DDP starts every process from rank 0's weights; fully_shard keeps each process's own shard,
    # and every process was seeded differently: start them all from rank 0's weights, as DDP does
    with torch.no_grad():
        for tensor in [*trainee.parameters(), *trainee.buffers()]:
            dist.broadcast_(tensor, src=0)
    for block in [m for m in trainee.modules() if isinstance(m, Block)]:
        fully_shard(block)
    fully_shard(trainee)
    return trainee


def refuse_unsharded_options(cfg: TrainConfig, device: torch.device, optimizer: str = "adamw") -> None:
    """Settings that would not do what they say on sharded parameters: refused, not overridden."""
    if optimizer == "lars":  # its trust ratio needs each weight's whole norm; on shards it is untested
        raise ConfigError("optim.name lars with train.strategy fsdp: LARS's layer-wise trust ratio would have to "
                          "be computed on each process's shard of a weight, which mimreg has not verified; use "
                          "train.strategy ddp")
    if cfg.precision == "fp16" and device.type == "cuda":
        raise ConfigError("train.precision fp16 with train.strategy fsdp: the GradScaler would find inf/NaN on "
                          "each process's shard alone and skip steps on some shards only; use bf16")
    if cfg.compile:
        raise ConfigError("train.compile with train.strategy fsdp: compiled blocks would trace FSDP's "
                          "all-gather hooks; use train.compile false or train.strategy ddp")
    if cfg.knn_every:
        raise ConfigError("train.knn_every with train.strategy fsdp: the online k-NN monitor runs the encoder on "
                          "one process, which sharded weights do not allow; set train.knn_every=0 (it is off "
                          "by default under fsdp) or use train.strategy ddp")
    if cfg.rep_monitor_every:
        raise ConfigError("train.rep_monitor_every with train.strategy fsdp: the representation monitor runs the "
                          "encoder on one process, which sharded weights do not allow; set train.rep_monitor_every=0 "
                          "(it is off by default under fsdp) or use train.strategy ddp")


def parameter_names(trainee: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of every parameter the optimizer holds, in its numbering (group by group)."""
    names = {id(p): name for name, p in trainee.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)
