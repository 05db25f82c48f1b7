"""The few collectives mimreg needs, all no-ops in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B, ...) from every process along dim 0, keeping the autograd graph.

    The backward sums the gradient that every process sends to each slice (a reduce-scatter).
    Every process computes the same global loss and DDP averages parameter gradients, so the
    result is the exact gradient of the loss on the global batch.
    """
    if not is_distributed():
        return x
    from torch.distributed import _functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd  # its new name
    return gather(x.contiguous(), gather_dim=0, group=dist.group.WORLD)


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over processes, keeping the autograd graph (the backward sums the gradients of
    every process, as `gather_with_grad` does); `x` itself in a single process."""
    if not is_distributed():
        return x
    from torch.distributed import _functional_collectives as funcol

    if hasattr(funcol, "all_reduce_backward"):  # torch releases whose functional all_reduce has a backward
        return funcol.all_reduce(x.contiguous(), "sum", dist.group.WORLD)
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # older releases: the differentiable one is the deprecated API
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x.contiguous())


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes, without gradient (for logging)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size()


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    """Minimum of a tensor over processes, without gradient."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.MIN)
    return y


def broadcast_from_main(value):
    """The main process's `value` (any picklable object) on every process; `value` in one process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_by_main(decide):
    """`decide()` run on the main process alone, its result (or its error, raised) on every process:
    for what the main process's files say, which another process may read before it is written."""
    if not is_distributed():
        return decide()
    outcome = None
    if is_main_process():
        try:
            outcome = ("value", decide())
        except Exception as err:  # every process raises it
            outcome = ("error", err)
    kind, value = broadcast_from_main(outcome)
    if kind == "error":
        raise value
    return value


def gather_objects(value) -> list:
    """Every process's `value` (any picklable object), in rank order; [value] in one process."""
    if not is_distributed():
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def launched_world_size() -> int:
    """The number of processes `torchrun` launched (its WORLD_SIZE), 1 without torchrun; known
    before the process group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str) -> bool:
    """Join the process group that `torchrun` describes in the environment; False if none."""
    if launched_world_size() <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Leave the process group. The barrier first lets every process finish its collectives: a
    process that tears gloo down while a peer is still talking to it can abort the peer."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, str | None]:
    """Turn every BatchNorm of `module` into SyncBatchNorm (statistics of the global batch) when
    several CUDA processes train it. Returns the module and, where BatchNorm stays per process
    (torch's SyncBatchNorm needs a GPU), a note saying so; None when nothing is to say."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if not (has_bn and is_distributed()):
        return module, None
    if device.type != "cuda":
        return module, (f"note: BatchNorm layers normalise over each process's batch: SyncBatchNorm needs CUDA, "
                        f"this run is on {device.type}")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module), None
