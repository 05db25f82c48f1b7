"""Batch-wide losses over the global batch: 2 processes (torchrun, gloo, CPU) equal 1 process on
the concatenated batch, in loss and in gradients (SimCLR, VICReg, Barlow Twins through DDP; the bare
NT-Xent, VICReg, Barlow (gathered and all-reduced), MSN with Sinkhorn + ME-MAX, and T-REGS).
SIGReg's ECF sums are all-reduced with gradient: the twice-the-1-process gradient of the bare test
below fails where that reduction carries none (the 1/world_size gradient of lightly #1920, #1977).
All in float64 (see the worker), so the comparisons hold on any CPU."""

from pathlib import Path

import pytest
import torch

from support import assert_close_at_scale, assert_same_gradients

WORKER = Path(__file__).with_name("ddp_batchwide_worker.py")


@pytest.fixture(scope="module")
def worker(load_module):
    return load_module(WORKER)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, worker_ranks):
    return worker_ranks(WORKER, tmp_path_factory.mktemp("ddp_batchwide"))


def one_process_step(worker, name, views):
    model = worker.build_joint(name, gather=True)
    total = sum(model(views).losses.values())
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["simclr", "vicreg", "barlow"])
def test_joint_method_under_ddp_equals_one_process(ranks, worker, name, single_thread):
    views = worker.global_views()
    loss, grads = one_process_step(worker, name, views)
    # SimCLR's and Barlow's losses are global on every process; VICReg's invariance is the mean over
    # the local pairs, so the mean over processes is the global loss for all three
    mean = (ranks[0][f"{name}/gather"]["loss"] + ranks[1][f"{name}/gather"]["loss"]) / 2
    assert mean.item() == pytest.approx(loss.item(), rel=1e-9)
    assert {"projector.0.weight", "encoder.vit.cls_token"} <= set(grads)
    for r in ranks:  # all_gather's backward sums over processes, DDP averages: the global gradient
        assert_same_gradients(r[f"{name}/gather"]["grads"], grads, name)
    if name != "simclr":  # VICReg and Barlow centre each dimension over the batch: the projector's
        # last bias has no effect on the loss, its gradient is zero up to rounding (why the
        # tolerance is tied to the whole gradient, not to each tensor)
        scale = max(g.abs().max().item() for g in grads.values())
        assert grads["projector.6.bias"].abs().max().item() < 1e-9 * scale


@pytest.mark.parametrize("name", ["simclr", "vicreg", "barlow"])
def test_without_gather_each_process_uses_its_local_batch(ranks, worker, name, single_thread):
    model = worker.build_joint(name, gather=False)
    views = worker.global_views()
    for rank, r in enumerate(ranks):
        part = slice(rank * 4, rank * 4 + 4)
        with torch.no_grad():
            expected = sum(model([v[part] for v in views]).losses.values())
        assert r[f"{name}/local"]["loss"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert ranks[0][f"{name}/local"]["loss"].item() != pytest.approx(ranks[1][f"{name}/local"]["loss"].item(), rel=1e-3)


@pytest.mark.parametrize("batch", [8, 2])
def test_bare_batchwide_losses_on_gathered_inputs(ranks, worker, batch):
    terms, grads = worker.run_bare(worker.global_inputs(batch), lambda x: x)
    for name, value in terms.items():
        got = [r[f"bare{batch}"]["terms"][name] for r in ranks]
        if name in worker.LOCAL_TERMS:  # a mean over the local batch: its mean over processes
            assert ((got[0] + got[1]) / 2).item() == pytest.approx(value.item(), rel=1e-9), name
        else:
            for g in got:
                assert g.item() == pytest.approx(value.item(), rel=1e-9), name
    for rank, r in enumerate(ranks):
        part = slice(rank * batch // 2, (rank + 1) * batch // 2)
        # without DDP's averaging, each process's slice receives the sum over the 2 processes of the
        # same gradient (and a local mean weighs each row twice): twice the 1-process gradient
        for got, expected in zip(r[f"bare{batch}"]["grads"], grads):
            assert_close_at_scale(got, 2 * expected[part], 1e-9, 2 * expected.abs().max().item())


def test_lejepa_under_ddp_equals_one_process(ranks, worker, single_thread):
    """LeJEPA's SIGReg over the global batch (all-reduced ECF sums) and its prediction, a mean over
    the local batch: the mean over processes is the global loss, and DDP's gradient the global one;
    without gather each process's SIGReg sees its own batch."""
    views = worker.global_views()
    loss, grads = one_process_step(worker, "lejepa", views)
    mean = (ranks[0]["lejepa/gather"]["loss"] + ranks[1]["lejepa/gather"]["loss"]) / 2
    assert mean.item() == pytest.approx(loss.item(), rel=1e-9)
    for r in ranks:
        assert_same_gradients(r["lejepa/gather"]["grads"], grads, "lejepa")
    for rank, r in enumerate(ranks):
        model = worker.build_joint("lejepa", gather=False)  # its first call's slices, as each process's
        with torch.no_grad():
            expected = sum(model([v[rank * 4:rank * 4 + 4] for v in views]).losses.values())
        assert r["lejepa/local"]["loss"].item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("batch", [8, 2])
@pytest.mark.parametrize("name", ["sigreg", "sigreg/gathered"])
def test_sigreg_value_and_gradient_are_the_global_batch(ranks, worker, batch, name):
    """SIGReg with its ECF sums all-reduced (the Regularizer) and on gathered inputs: both the global
    statistic, and each process's rows get the whole gradient that the global loss sends them
    (DDP then averages 2 equal copies), not 1/world_size of it."""
    expected = worker.run_sigreg(worker.global_inputs(batch), lambda x: x)[name]
    for rank, r in enumerate(ranks):
        got = r[f"sigreg{batch}"][name]
        assert got["value"].item() == pytest.approx(expected["value"].item(), rel=1e-9)
        part = slice(rank * batch // 2, (rank + 1) * batch // 2)
        for g, e in zip(got["grads"], expected["grads"]):
            assert_close_at_scale(g, 2 * e[part], 1e-9, 2 * e.abs().max().item())


@pytest.mark.slow  # a torchrun or job of ~15-20 s: make test-slow
def test_joint_pretraining_under_torchrun(tmp_path, torchrun):
    """A SimCLR run on 2 CPU processes: the views are sharded, the run finishes, and it says that
    BatchNorm stays per process (SyncBatchNorm needs CUDA)."""
    import json

    run = tmp_path / "run"
    proc = torchrun(["-m", "mimreg.cli", "pretrain", "digits/simclr", "--out", str(run),
                     "--set", "data.name=synthetic", "--set", "data.subset=64", "--set", "optim.batch_size=8",
                     "--set", "train.epochs=1", "--set", "train.progress=false"], tmp_path)
    assert "SyncBatchNorm needs CUDA" in proc.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["world"] == 2 and records[0]["steps_per_epoch"] == 4  # 64 / (8 x 2)
    assert any("nt_xent" in r for r in records)
