"""GPU switches: mixed precision steps, SyncBatchNorm under DDP, the MST on CUDA (marked `cuda`: they
skip on CPU), and fused attention in every transformer block (checked on CPU too)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from timm.models.vision_transformer import Attention

from mimreg import distributed
from mimreg.config import load_config
from mimreg.engine.build import build_trainee
from mimreg.engine.checkpoint import load_checkpoint
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.engine.strategy import Strategy
from mimreg.regularizers.mst import mst_edges

pytestmark = pytest.mark.usefixtures("single_thread")
CUDA_SETS = ("train.device=cuda", "data.subset=64", "train.epochs=2", "optim.warmup_epochs=1", "train.knn_every=0")


def test_every_attention_uses_torch_fused_attention(tiny_config):
    """timm's blocks call F.scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)
    unless TIMM_FUSED_ATTN=0 or an exportable mode turned it off: mimreg keeps them on."""
    trainee = build_trainee(tiny_config("mae"))
    attentions = [m for m in trainee.modules() if isinstance(m, Attention)]
    assert len(attentions) >= 2  # encoder and decoder blocks
    assert all(m.fused_attn for m in attentions)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite_and_weights_stay_fp32(tmp_path, tiny_config, precision):
    pretrain(tiny_config("u-mae", *CUDA_SETS, f"train.precision={precision}"), tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("kind") == "train"]
    assert len(rows) == 4
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reg/uniformity"]) for r in rows)
    state = load_checkpoint(tmp_path / "run")
    assert all(w.dtype == torch.float32 for w in state["model"].values() if w.is_floating_point())
    # fp16 runs its backward through a GradScaler (its scale is saved for --resume); bf16 needs none
    assert bool(state["scaler"]) == (precision == "fp16")


def simclr_config(*sets: str):
    """SimCLR (a BatchNorm projector) on tiny synthetic images."""
    return load_config("digits/simclr", ["data.name=synthetic", "data.subset=32", "optim.batch_size=16",
                                         "train.progress=false", *sets])


@pytest.fixture
def one_process_group(monkeypatch):
    """A real NCCL group of one process, reported as distributed (the code paths of torchrun)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    torch.distributed.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda:0"))
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.parametrize("sync", [True, False])
def test_batchnorm_is_synchronised_under_ddp(one_process_group, sync):
    cfg = simclr_config(f"train.sync_batchnorm={str(sync).lower()}", "train.device=cuda")
    device = torch.device("cuda:0")
    trainee = build_trainee(cfg).to(device)
    model = Strategy(cfg.train, device).wrap(trainee)  # converts the BatchNorm layers of `trainee` in place
    norms = [m for m in trainee.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms, "simclr's projector has BatchNorm layers"
    assert all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms) == sync
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    views = [torch.rand(16, 3, 32, 32, device=device) for _ in range(2)]
    model(views, epoch=0).total.backward()
    grads = [p.grad for p in trainee.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.cuda
def test_boruvka_on_cuda_is_scipys_tree_at_4096():
    z = torch.randn(4096, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dist = torch.cdist(z, z).float()
    i, j = mst_edges(dist.cuda(), backend="boruvka")
    assert len(i) == 4095
    length = dist.double()[i.cpu(), j.cpu()].sum().item()
    assert length == pytest.approx(float(minimum_spanning_tree(dist.numpy()).sum()), rel=1e-6)
