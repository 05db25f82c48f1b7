"""mimreg.distributed: every collective goes through it, and each helper hands NCCL its tensor on
the process's GPU (a CPU tensor is refused there) and gives the result back where the caller had it.

No GPU is needed: the backend is reported as `nccl`, the process's GPU is cuda:1, and the tensors
are torch's fake tensors (a device and a shape, no data: FakeTensorMode), which follow every
device move as real ones would; fake collectives record the device of what they get."""

from __future__ import annotations

import ast
import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from torch._subclasses.fake_tensor import FakeTensorMode

from mimreg import distributed as dist
from mimreg.errors import ConfigError

SRC = Path(dist.__file__).resolve().parent
GPU = torch.device("cuda", 1)  # this process's GPU
CPU = torch.device("cpu")


@pytest.fixture
def seen(monkeypatch):
    """Two processes on NCCL; the (collective, device) pairs the fake collectives saw."""
    seen: list[tuple[str, torch.device]] = []
    monkeypatch.setattr(torch_dist, "is_initialized", lambda: True)
    monkeypatch.setattr(torch_dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch_dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(torch_dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "_own_gpu", lambda: GPU)
    for name in ("all_reduce", "broadcast"):
        monkeypatch.setattr(torch_dist, name, lambda t, *a, name=name, **k: seen.append((name, t.device)))
    monkeypatch.setattr(torch_dist, "barrier", lambda group=None, device_ids=None: seen.append(("barrier", device_ids)))
    return seen


@pytest.fixture
def fake():
    with FakeTensorMode(allow_non_fake_inputs=True):
        yield


@pytest.mark.parametrize("helper", [dist.all_reduce_mean, dist.all_reduce_min, dist.all_reduce_sum])
def test_reductions_run_on_the_gpu_and_come_back(seen, fake, helper):
    x = torch.tensor([1.0, 2.0])  # e.g. fine-tuning's epoch loss: a Python number made a CPU tensor
    out = helper(x)
    assert seen == [("all_reduce", GPU)]
    assert out.device == CPU and out.shape == x.shape and out is not x  # the caller's tensor is not reduced in place


def test_broadcast_overwrites_the_callers_tensor_where_it_is(seen, fake):
    x = torch.zeros(3)
    assert dist.broadcast_(x) is x
    assert seen == [("broadcast", GPU)] and x.device == CPU
    on_gpu = torch.zeros(3, device=GPU)  # FSDP's parameters: already there, broadcast as they are
    assert dist.broadcast_(on_gpu) is on_gpu and seen[-1] == ("broadcast", GPU)


def test_barrier_names_the_processs_gpu(seen):
    dist.barrier()
    assert seen == [("barrier", [1])]


@pytest.mark.parametrize("helper, length", [(dist.gather_with_grad, 4), (dist.all_reduce_sum_with_grad, 2)])
def test_differentiable_collectives_run_on_the_gpu_and_come_back(seen, fake, monkeypatch, helper, length):
    from torch.distributed import _functional_collectives as funcol

    def collective(name, times):
        def run(t, *args, **kwargs):
            seen.append((name, t.device))
            return torch.cat([t] * times)
        return run

    for name in ("all_gather_single_autograd", "all_gather_tensor_autograd"):
        monkeypatch.setattr(funcol, name, collective("all_gather", 2), raising=False)
    monkeypatch.setattr(funcol, "all_reduce", collective("all_reduce", 1))
    if not hasattr(funcol, "all_reduce_backward"):
        import torch.distributed.nn.functional as nn_functional

        monkeypatch.setattr(nn_functional, "all_reduce", collective("all_reduce", 1))
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = helper(x)
    assert [device for _, device in seen] == [GPU]
    assert out.device == CPU and out.shape == (length,) and out.requires_grad  # still in the graph


def test_object_collectives_rely_on_the_current_cuda_device(monkeypatch):
    """torch places an object collective's tensor on torch.cuda.current_device(): local_device
    must make the process's GPU current, or every process would talk through cuda:0."""
    from mimreg.devices import local_device

    made_current = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert local_device(torch.device("cuda"), distributed=True) == GPU
    assert made_current == [GPU]


def test_joining_nccl_makes_the_processs_gpu_current_and_sets_the_timeout(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(torch_dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(dist, "_timeout_s", None)
    assert dist.init_from_env("cuda", timeout_s=5)
    assert calls == [("set_device", 1), ("init", {"backend": "nccl", "timeout": datetime.timedelta(seconds=5)})]


def test_pretrain_joins_with_the_configured_timeout(monkeypatch, tmp_path, tiny_config):
    from mimreg.engine.loop import pretrain

    class Joined(Exception):
        pass

    def init_from_env(device_type, timeout_s=None):
        raise Joined(timeout_s)

    monkeypatch.setattr(dist, "init_from_env", init_from_env)
    with pytest.raises(Joined, match="^42.0$"):
        pretrain(tiny_config("mae", "train.dist_timeout_s=42"), tmp_path / "run")
    assert tiny_config("mae").train.dist_timeout_s == 900  # not torch's 30 minutes
    with pytest.raises(ConfigError, match="train.dist_timeout_s"):
        tiny_config("mae", "train.dist_timeout_s=0")


def test_gloo_takes_tensors_where_they_are(seen, monkeypatch):
    monkeypatch.setattr(torch_dist, "get_backend", lambda group=None: "gloo")
    def all_reduce(t, op=None):  # two processes holding the same values
        seen.append(("all_reduce", t.device))
        t.mul_(2 if op == torch_dist.ReduceOp.SUM else 1)

    monkeypatch.setattr(torch_dist, "all_reduce", all_reduce)
    x = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_mean(x).tolist() == [1.0, 2.0]  # the sum of two equal values, over 2
    assert dist.all_reduce_min(x).tolist() == [1.0, 2.0]
    assert seen == [("all_reduce", CPU)] * 2 and x.tolist() == [1.0, 2.0]


# ---------------------------------------------------------------- timeouts
class FakeStore:
    """The process group's store, as the other ranks left it."""

    def __init__(self, **keys):
        self.keys = {k: v.encode() for k, v in keys.items()}

    def set(self, key, value):
        self.keys[key] = value.encode()

    def check(self, keys):
        return all(k in self.keys for k in keys)

    def get(self, key):
        return self.keys[key]


def test_a_timeout_names_the_silent_ranks_and_those_waiting_elsewhere(seen, monkeypatch):
    monkeypatch.setattr(torch_dist, "get_world_size", lambda group=None: 4)
    monkeypatch.setattr(dist, "_timeout_s", 2.0)  # a grace of 1 s for the others to say where they wait
    store = FakeStore(**{"mimreg/timed_out/2": "barrier", "mimreg/timed_out/3": "all_reduce"})
    monkeypatch.setattr(torch_dist.distributed_c10d, "_get_default_store", lambda: store)
    assert dist.timeout_message("all_reduce") == (
        "process group timed out after 2 s waiting in all_reduce on rank 0; rank 1 stopped answering (in no "
        "collective); rank 2 waited in barrier instead; read that rank's output, or raise train.dist_timeout_s "
        "if a step really takes that long")
    assert store.get("mimreg/timed_out/0") == b"all_reduce"  # where this rank waited, for the others


def test_the_cli_names_the_rank_for_a_timeout_outside_the_helpers(seen, monkeypatch):
    from mimreg.cli import named_timeout
    from mimreg.errors import MimregError

    monkeypatch.setattr(dist, "timeout_message", lambda collective: f"timed out in {collective}; rank 1 ...")
    err = named_timeout(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms for recv"))
    assert isinstance(err, MimregError) and str(err) == "timed out in a DDP or FSDP collective; rank 1 ..."
    other = RuntimeError("Connection closed by peer")
    assert named_timeout(other) is other


# ---------------------------------------------------------------- no collective outside mimreg.distributed
COLLECTIVES = {
    "all_reduce", "all_reduce_coalesced", "all_reduce_multigpu", "all_gather", "all_gather_object",
    "all_gather_into_tensor", "all_gather_coalesced", "all_gather_multigpu", "all_gather_tensor",
    "all_gather_tensor_autograd", "all_gather_single", "all_gather_single_autograd", "_all_gather_base",
    "broadcast", "broadcast_object_list", "broadcast_multigpu", "reduce", "reduce_multigpu",
    "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_tensor_autograd", "reduce_scatter_single",
    "reduce_scatter_single_autograd", "_reduce_scatter_base", "all_to_all", "all_to_all_single",
    "all_to_all_single_autograd", "barrier", "monitored_barrier", "gather", "gather_object", "scatter",
    "scatter_object_list", "send", "recv", "isend", "irecv", "send_object_list", "recv_object_list",
    "batch_isend_irecv", "permute_tensor", "wait_tensor"}
DIST_MODULES = ("torch.distributed", "torch.distributed.distributed_c10d", "torch.distributed.nn",
                "torch.distributed.nn.functional", "torch.distributed._functional_collectives",
                "torch.distributed._functional_collectives_impl")


def direct_collectives(source: str) -> list[str]:
    """`line: call` for each torch.distributed collective that `source` calls or imports by name."""
    tree = ast.parse(source)
    aliases = {}  # local name -> torch.distributed module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in DIST_MODULES:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in DIST_MODULES:
                    aliases[a.asname or a.name] = full
                elif node.module in DIST_MODULES and a.name in COLLECTIVES:
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES and dotted(node.value, aliases) in DIST_MODULES:
            found.append(f"{node.lineno}: {dotted(node.value, aliases)}.{node.attr}")
    return found


def dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """`torch.distributed` for `torch.distributed`, `dist` (an alias of it), `torch_dist.nn`..."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def test_the_scan_finds_each_way_of_calling_a_collective():
    source = ("import torch\nimport torch.distributed as td\nfrom torch import distributed as d2\n"
              "from torch.distributed import _functional_collectives as fc\nfrom torch.distributed import barrier\n"
              "torch.distributed.all_reduce(x)\ntd.broadcast(x, 0)\nd2.all_gather_object(o, v)\n"
              "fc.all_gather_tensor(x, 0, g)\ntorch.distributed.nn.functional.all_reduce(x)\n"
              "td.get_rank()\nfrom mimreg import distributed as dist\ndist.all_reduce_mean(x)\n")
    assert direct_collectives(source) == [
        "5: from torch.distributed import barrier", "6: torch.distributed.all_reduce", "7: torch.distributed.broadcast",
        "8: torch.distributed.all_gather_object", "9: torch.distributed._functional_collectives.all_gather_tensor",
        "10: torch.distributed.nn.functional.all_reduce"]  # and neither get_rank nor mimreg's own helpers


def test_no_module_calls_torch_distributed_collectives_directly():
    offenders = {str(path.relative_to(SRC.parent)): calls for path in sorted(SRC.rglob("*.py"))
                 if path != SRC / "distributed.py" and (calls := direct_collectives(path.read_text()))}
    assert offenders == {}, f"call these through mimreg.distributed instead: {offenders}"
