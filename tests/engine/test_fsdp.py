"""train.strategy fsdp (FSDP2) against DDP on 2 CPU processes (gloo), its checkpoints and resume, and
activation checkpointing (train.grad_checkpointing) in one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mimreg.config import load_config
from mimreg.engine.build import build_trainee
from mimreg.engine.checkpoint import load_checkpoint
from mimreg.engine.metrics import read_metrics
from mimreg.engine.strategy import Strategy, set_grad_checkpointing
from mimreg.errors import ConfigError
from mimreg.eval.frozen import load_encoder

WORKER = Path(__file__).with_name("fsdp_worker.py")
SLOW_RUNS = pytest.mark.slow  # the tests of the two-process runs (~50 s of torchrun): in make test-slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torchrun) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    torchrun([str(WORKER), str(out)], out)
    return out


def logged(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run / "metrics.jsonl")
            if r["kind"] in ("train", "epoch")]


def assert_same_records(got: list[dict], want: list[dict], rel: float) -> None:
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
    for a, b in zip(got, want):
        assert set(a) == set(b)
        for key, value in b.items():
            expected = value if isinstance(value, str) else pytest.approx(value, rel=rel, abs=1e-6)
            assert a[key] == expected, (a["step"], key)


def final_state(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "ckpt_00000003.pt")


def assert_states_close(got: dict, want: dict, atol: float) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=atol, msg=key)


@SLOW_RUNS
@pytest.mark.parametrize("fsdp, ddp", [("fsdp", "ddp"), ("byol_fsdp", "byol_ddp")])
def test_fsdp_trains_to_the_same_losses_as_ddp(runs, fsdp, ddp):
    """Same global batch, same weights from rank 0: every logged term equal up to float32 rounding
    (reduce-scatter and all-reduce sum in other orders); BYOL's EMA target and BatchNorm included."""
    assert len(logged(runs / ddp)) >= 3
    assert_same_records(logged(runs / fsdp), logged(runs / ddp), rel=1e-5)


@SLOW_RUNS
def test_fsdp_checkpoint_has_the_ddp_format_and_loads_for_evaluation(runs):
    fsdp, ddp = final_state(runs / "fsdp"), final_state(runs / "ddp")
    assert_states_close(fsdp["model"], ddp["model"], atol=1e-5)  # full, unsharded tensors, the same names
    groups = [{k: v for k, v in g.items() if k != "lr"} for g in fsdp["optimizer"]["param_groups"]]
    assert groups == [{k: v for k, v in g.items() if k != "lr"} for g in ddp["optimizer"]["param_groups"]]
    assert fsdp["optimizer"]["state"].keys() == ddp["optimizer"]["state"].keys()  # torch.optim's numbering
    for index, moments in ddp["optimizer"]["state"].items():
        torch.testing.assert_close(fsdp["optimizer"]["state"][index]["exp_avg"], moments["exp_avg"], rtol=0,
                                   atol=1e-6)
    encoder, cfg, _ = load_encoder(runs / "fsdp")
    assert cfg.train.strategy == "fsdp"
    reference, _, _ = load_encoder(runs / "ddp")
    assert_states_close(encoder.state_dict(), reference.state_dict(), atol=1e-5)
    byol = load_checkpoint(runs / "byol_fsdp")["model"]  # the EMA target moved with the online encoder
    name = "vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(byol[f"method.target_encoder.{name}"], byol[f"method.encoder.{name}"])
    torch.testing.assert_close(byol[f"method.target_encoder.{name}"],
                               load_checkpoint(runs / "byol_ddp")["model"][f"method.target_encoder.{name}"],
                               rtol=0, atol=1e-6)


@SLOW_RUNS
def test_fsdp_run_halted_and_resumed_equals_the_uninterrupted_run(runs):
    """Halted at step 2 of 3 (its checkpoint gathered from the shards), resumed: every record and the
    final weights as in the uninterrupted FSDP run (which also checkpointed its activations)."""
    resumed = runs / "fsdp_resumed"
    assert (resumed / "checkpoints" / "ckpt_00000002.pt").is_file()
    assert_same_records(logged(resumed), logged(runs / "fsdp"), rel=1e-6)
    assert_states_close(final_state(resumed)["model"], final_state(runs / "fsdp")["model"], atol=1e-6)


@SLOW_RUNS
def test_ddp_checkpoint_resumes_under_fsdp(runs):
    """One checkpoint format: a DDP run halted at step 2 and resumed under FSDP equals the DDP run."""
    assert_same_records(logged(runs / "ddp_then_fsdp"), logged(runs / "ddp"), rel=1e-5)
    assert_states_close(final_state(runs / "ddp_then_fsdp")["model"], final_state(runs / "ddp")["model"], atol=1e-5)


@SLOW_RUNS
@pytest.mark.parametrize("accum", [2, 3])
def test_accumulation_under_two_processes_resumes_to_the_uninterrupted_run(runs, accum):
    """7 micro-batches per epoch: 3 (accum 2) or 2 (accum 3) optimizer steps, the rest dropped before
    the epoch's checkpoint; halted after step 1 and resumed, every record and weight as uninterrupted."""
    whole, resumed = runs / f"accum{accum}", runs / f"accum{accum}_resumed"
    steps = 7 // accum
    start = next(r for r in read_metrics(whole / "metrics.jsonl") if r["kind"] == "start")
    assert (start["world"], start["steps_per_epoch"], start["total_steps"]) == (2, steps, 2 * steps)
    assert_same_records(logged(resumed), logged(whole), rel=1e-6)
    last = f"ckpt_{2 * steps:08d}.pt"
    assert_states_close(load_checkpoint(resumed / "checkpoints" / last)["model"],
                        load_checkpoint(whole / "checkpoints" / last)["model"], atol=1e-6)


# ---------------------------------------------------------------- activation checkpointing
def step_with_counts(trainee, images, checkpointed: bool):
    """Loss, gradients, block calls (after forward, after backward) and bytes saved for backward of
    one step. Calls are counted on entry: a recomputation stops once it has what backward needs."""
    set_grad_checkpointing(trainee, checkpointed)
    calls = [0]
    hooks = [m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
             for m in trainee.modules() if type(m).__name__ == "Block"]
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    trainee.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # drop_path draws from torch's RNG: replayed in the recomputation
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = trainee(images, generator=torch.Generator().manual_seed(5))
    forward_calls = calls[0]
    result.total.backward()
    for hook in hooks:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in trainee.named_parameters() if p.grad is not None}
    return result.total.detach(), grads, (forward_calls, calls[0]), saved[0]


def test_grad_checkpointing_recomputes_blocks_saves_less_and_keeps_loss_and_gradients(tiny_config):
    cfg = tiny_config("mae", "model.drop_path=0.1")
    torch.manual_seed(0)
    trainee = build_trainee(cfg, 0).train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss, grads, calls, saved = step_with_counts(trainee, images, checkpointed=False)
    loss_ckpt, grads_ckpt, calls_ckpt, saved_ckpt = step_with_counts(trainee, images, checkpointed=True)
    blocks = trainee.method.encoder.depth + len(trainee.method.decoder.blocks)
    assert calls == (blocks, blocks)
    assert calls_ckpt == (blocks, 2 * blocks)  # every block ran again in backward
    assert saved_ckpt < saved / 4  # what backward keeps: the blocks' inputs instead of their activations
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=0)
    assert grads_ckpt.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------- settings
def test_unknown_strategy_is_refused_at_load():
    with pytest.raises(ConfigError, match="train.strategy: unknown value 'zero3'"):
        load_config("digits/mae", ["train.strategy=zero3"])


@pytest.mark.parametrize("setting, message", [("train.compile=true", "train.compile with train.strategy fsdp"),
                                              ("train.precision=fp16", "fp16 with train.strategy fsdp.*bf16"),
                                              ("train.knn_every=1", "k-NN monitor.*train.knn_every=0"),
                                              ("train.rep_monitor_every=5",
                                               "representation monitor.*train.rep_monitor_every=0")])
def test_settings_fsdp_cannot_honour_are_refused(tiny_config, monkeypatch, setting, message):
    cfg = tiny_config("mae", "train.strategy=fsdp", setting)
    from mimreg import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)  # as under torchrun
    with pytest.raises(ConfigError, match=message):
        Strategy(cfg.train, torch.device("cuda"))
    monkeypatch.setattr(distributed, "is_distributed", lambda: False)  # one process: nothing to shard
    assert not Strategy(cfg.train, torch.device("cpu")).sharded


def test_lars_under_fsdp_is_refused(tiny_config, monkeypatch):
    cfg = tiny_config("mae", "train.strategy=fsdp", "optim.name=lars", "optim.betas=null")
    from mimreg import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)  # as under torchrun
    with pytest.raises(ConfigError, match="optim.name lars with train.strategy fsdp.*train.strategy ddp"):
        Strategy(cfg.train, torch.device("cpu"), cfg.optim.name)
    assert Strategy(cfg.train, torch.device("cpu"), "adamw").sharded
