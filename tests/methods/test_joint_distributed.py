"""SimCLR's NT-Xent over the global batch: 2 processes (torchrun, gloo, CPU) equal 1 process on
the concatenated batch, in loss and in gradients."""

import importlib.util
from pathlib import Path

import pytest
import torch

from mimreg.methods import nt_xent_loss

WORKER = Path(__file__).with_name("ddp_joint_worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_joint_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, torchrun):
    folder = tmp_path_factory.mktemp("ddp_joint")
    torchrun([str(WORKER), str(folder)], folder)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def single():
    worker = load_worker()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = worker.build_simclr(gather=True)
        views = worker.global_views()
        out = model(views)
        out.losses["nt_xent"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        local = []
        for rank in range(2):
            part = slice(rank * 4, rank * 4 + 4)
            with torch.no_grad():
                local.append(model([v[part] for v in views]).losses["nt_xent"])
    finally:
        torch.set_num_threads(before)
    return out.losses["nt_xent"].detach(), grads, local


def test_gathered_loss_and_gradients_equal_one_process(ranks, single):
    loss, grads, _ = single
    for r in ranks:  # every process computes the loss of the whole batch of 8 pairs
        assert r["gather"]["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert set(ranks[0]["gather"]["grads"]) == set(grads)
    assert {"projector.0.weight", "projector.3.weight", "encoder.vit.cls_token"} <= set(grads)
    for name, grad in grads.items():
        for r in ranks:  # all_gather's backward sums over processes, DDP averages: the global gradient
            torch.testing.assert_close(r["gather"]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_without_gather_each_process_uses_its_local_negatives(ranks, single):
    loss, _, local = single
    for r, expected in zip(ranks, local):
        assert r["local"]["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert ranks[0]["local"]["loss"].item() != pytest.approx(ranks[1]["local"]["loss"].item(), rel=1e-3)
    assert ranks[0]["local"]["loss"].item() != pytest.approx(loss.item(), rel=1e-3)  # fewer negatives


def test_bare_loss_on_gathered_embeddings(ranks):
    worker = load_worker()
    z1, z2 = (z.clone().requires_grad_(True) for z in worker.global_embeddings())
    loss = nt_xent_loss(z1, z2, 0.3)
    loss.backward()
    for rank, r in enumerate(ranks):
        part = slice(rank * 4, rank * 4 + 4)
        assert r["bare"]["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        # without DDP's averaging, each process's slice receives the sum over the 2 processes of
        # the same gradient: exactly twice the 1-process gradient
        torch.testing.assert_close(r["bare"]["z1_grad"].double(), 2 * z1.grad[part], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(r["bare"]["z2_grad"].double(), 2 * z2.grad[part], rtol=1e-5, atol=1e-7)
