"""The few collectives mimreg needs, all no-ops in a single process.

Every collective of mimreg goes through here (tests/test_collectives.py fails on any other call):
each helper puts its tensor where the backend needs it (NCCL: this process's GPU; gloo: where it
is), gives the result back on the caller's device, and turns a timeout into an error naming the
rank(s) that stopped answering."""

from __future__ import annotations

import contextlib
import datetime
import os
import time

import torch
import torch.distributed as dist

from mimreg.errors import MimregError


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
    return _functional("all_gather", lambda y: gather(y, gather_dim=0, group=dist.group.WORLD), x)


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over processes, keeping the autograd graph (the backward sums the gradients of
    every process, as `gather_with_grad` does); `x` itself in a single process."""
    if not is_distributed():
        return x
    from torch.distributed import _functional_collectives as funcol

    if hasattr(funcol, "all_reduce_backward"):  # torch releases whose functional all_reduce has a backward
        return _functional("all_reduce", lambda y: funcol.all_reduce(y, "sum", dist.group.WORLD), x)
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # older releases: the differentiable one is the deprecated API
        warnings.simplefilter("ignore", FutureWarning)
        return _functional("all_reduce", all_reduce, x)


def _functional(collective: str, run, x: torch.Tensor) -> torch.Tensor:
    """`run` (a differentiable collective) on `x` placed for the backend, its result on x's device."""
    if torch.compiler.is_compiling():  # traced: the compiled graph waits itself, on the device it runs on
        return run(x.contiguous())
    with _watch(collective):
        return _waited(run(_placed(x).contiguous())).to(x.device)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over processes, without gradient."""
    return _all_reduce(x, dist.ReduceOp.SUM) if is_distributed() else x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes, without gradient (for logging)."""
    return _all_reduce(x, dist.ReduceOp.SUM) / world_size() if is_distributed() else x


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    """Minimum of a tensor over processes, without gradient."""
    return _all_reduce(x, dist.ReduceOp.MIN) if is_distributed() else x


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    if torch.compiler.is_compiling():  # traced (e.g. MSN's Sinkhorn in a compiled step): torch places it
        y = x.detach().clone()
        dist.all_reduce(y, op=op)
        return y
    y = x.detach().to(_collective_device(x), copy=True)  # a copy: the caller's tensor stays as it was
    with _watch("all_reduce"):
        dist.all_reduce(y, op=op)
    return y.to(x.device)


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `x` in place with process `src`'s `x` (e.g. start every process from rank 0's
    weights); returns `x`."""
    if not is_distributed():
        return x
    with torch.no_grad():
        y = _placed(x)
        with _watch("broadcast"):
            dist.broadcast(y, src=src)
        if y is not x:
            x.copy_(y)
    return x


def barrier() -> None:
    """Wait until every process gets here."""
    if not is_distributed():
        return
    with _watch("barrier"):
        if dist.get_backend() == "nccl":  # without device_ids NCCL guesses the GPU (and warns)
            dist.barrier(device_ids=[_own_gpu().index])
        else:
            dist.barrier()


def broadcast_from_main(value):
    """The main process's `value` (any picklable object) on every process; `value` in one process.

    Object collectives pickle into a tensor that torch places itself: on NCCL, on
    torch.cuda.current_device(), which `init_from_env` (and `devices.local_device`) set to this
    process's GPU; without it every process would use cuda:0."""
    if not is_distributed():
        return value
    box = [value]
    with _watch("broadcast_object_list"):
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
    """Every process's `value` (any picklable object), in rank order; [value] in one process.
    On NCCL it needs torch.cuda.set_device first (see `broadcast_from_main`)."""
    if not is_distributed():
        return [value]
    out = [None] * world_size()
    with _watch("all_gather_object"):
        dist.all_gather_object(out, value)
    return out


def launched_world_size() -> int:
    """The number of processes `torchrun` launched (its WORLD_SIZE), 1 without torchrun; known
    before the process group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------- where tensors go
def _own_gpu() -> torch.device:
    """This process's GPU: the current CUDA device, which `devices.local_device` sets to cuda:LOCAL_RANK."""
    return torch.device("cuda", torch.cuda.current_device())


def _collective_device(x: torch.Tensor) -> torch.device:
    """Where the backend needs `x`: NCCL only takes tensors on the process's own GPU (a CPU
    tensor, e.g. a loss summed in Python, is refused); gloo takes them where they are."""
    return _own_gpu() if dist.get_backend() == "nccl" else x.device


def _placed(x: torch.Tensor) -> torch.Tensor:
    """`x` where the backend needs it: itself when it is there already, else a (differentiable) copy."""
    return x.to(_collective_device(x))


def _waited(x: torch.Tensor) -> torch.Tensor:
    """Wait for a functional collective's result here, so that its failure (a timeout) is raised
    inside `_watch` rather than at the tensor's first use. On CUDA this orders streams: no host sync."""
    from torch.distributed import _functional_collectives as funcol

    return funcol.wait_tensor(x) if isinstance(x, getattr(funcol, "AsyncCollectiveTensor", ())) else x


# ---------------------------------------------------------------- process group and timeouts
_timeout_s: float | None = None  # the process group's, set by init_from_env (for the messages)


def init_from_env(device_type: str, timeout_s: float | None = None) -> bool:
    """Join the process group that `torchrun` describes in the environment; False if none.

    `timeout_s`: how long a collective waits for the other processes before it fails (None:
    torch's default, 30 minutes on gloo, 10 on NCCL). On gloo the helpers here then raise a
    MimregError naming the rank(s) that stopped answering; on NCCL torch's watchdog ends the
    process itself and logs the collective that timed out."""
    global _timeout_s
    if launched_world_size() <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":  # NCCL's communicators and the object collectives use the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, timeout=timeout)
    _timeout_s = timeout_s
    return True


def is_timeout(err: BaseException) -> bool:
    """Whether `err` is a collective that gave up waiting for its peers (gloo's wording)."""
    return isinstance(err, RuntimeError) and "timed out" in str(err).lower()


@contextlib.contextmanager
def _watch(collective: str):
    """Turn a timed-out `collective` into a MimregError naming the rank(s) that stopped answering."""
    try:
        yield
    except RuntimeError as err:
        if not is_timeout(err):
            raise
        raise MimregError(timeout_message(collective)) from None


def timeout_message(collective: str) -> str:
    """What a process whose `collective` timed out says: the rank(s) that did not answer.

    Each process that times out records in the process group's store the collective it waited in,
    then gives the others a moment to do the same (they time out at about the same time): a rank
    with no record never reached a collective (hung, or busy elsewhere); one with another
    collective took a different path."""
    waited = f"{_timeout_s:g} s" if _timeout_s is not None else "torch's default timeout"
    head = f"process group timed out after {waited} waiting in {collective} on rank {rank()}"
    fix = "; read that rank's output, or raise train.dist_timeout_s if a step really takes that long"
    try:
        waiting = _census(collective)
    except Exception:  # the store lives in rank 0's process, which may be gone too
        return f"{head}; rank 0, which keeps the group's store, does not answer either{fix}"
    silent = [r for r in range(world_size()) if r not in waiting]
    names = f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))}"
    parts = [f"{names} stopped answering (in no collective)"] if silent else []
    parts += [f"rank {r} waited in {c} instead" for r, c in sorted(waiting.items()) if c != collective]
    return head + "; " + ("; ".join(parts) if parts else "every rank waited in it") + fix


def _census(collective: str) -> dict[int, str]:
    """{rank: the collective it timed out in} for each rank that said so within a grace period."""
    store = dist.distributed_c10d._get_default_store()
    keys = {r: f"mimreg/timed_out/{r}" for r in range(world_size())}
    store.set(keys[rank()], collective)
    deadline = time.monotonic() + min(max((_timeout_s or 60) / 2, 1.0), 30.0)
    while not store.check(list(keys.values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {r: store.get(k).decode() for r, k in keys.items() if store.check([k])}


def shutdown() -> None:
    """Leave the process group. The barrier first lets every process finish its collectives: a
    process that tears gloo down while a peer is still talking to it can abort the peer."""
    if dist.is_available() and dist.is_initialized():
        barrier()
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
