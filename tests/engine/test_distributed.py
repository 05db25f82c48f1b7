"""Two processes (torchrun, gloo, CPU) must equal one process on the concatenated batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimreg.regularizers import magma_loss, uniformity_loss

from support import assert_same_gradients

WORKER = Path(__file__).with_name("ddp_worker.py")
TIMEOUT_WORKER = Path(__file__).with_name("timeout_worker.py")


@pytest.fixture(scope="module")
def worker(load_module):
    return load_module(WORKER)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory, worker_ranks):
    return {mode: worker_ranks(WORKER, tmp_path_factory.mktemp(mode), mode) for mode in ("gather", "local")}


def single_process(worker):
    trainee = worker.build_trainee(gather=True)
    images, labels, noise = worker.global_batch()
    result = trainee(images, labels, noise=noise)
    result.total.backward()
    grads = {n: p.grad.clone() for n, p in trainee.named_parameters() if p.grad is not None}
    return result, grads


def test_global_batch_losses_and_gradients_equal_one_process(two_process_results, worker):
    ranks = two_process_results["gather"]
    single, single_grads = single_process(worker)
    for name in ("reg/uniformity", "reg/magma"):
        for r in ranks:  # every process sees the loss of the whole batch
            assert r["terms"][name].item() == pytest.approx(single.terms[name].item(), rel=1e-9)
    # the online probe normalises its features per process (its BatchNorm, like every BatchNorm on
    # gloo), so its cross-entropy and gradients are not the global batch's; all else must be
    objective = [r["total"] - r["terms"]["probe/ce"] for r in ranks]
    mean_objective = sum(objective) / 2  # local MAE means average to the global mean
    assert mean_objective.item() == pytest.approx((single.total - single.terms["probe/ce"]).item(), rel=1e-5)
    encoder_grads = {n: g for n, g in single_grads.items() if not n.startswith("probe")}
    for r in ranks:  # DDP averages; the gather's backward sums: together the exact global gradient
        assert_same_gradients({n: g for n, g in r["grads"].items() if not n.startswith("probe")}, encoder_grads)


def test_per_process_option_uses_the_local_batch(two_process_results, worker):
    ranks = two_process_results["local"]
    trainee = worker.build_trainee(gather=False)
    images, labels, noise = worker.global_batch()
    for rank, r in enumerate(ranks):
        part = slice(rank * 4, rank * 4 + 4)
        out = trainee.method(images[part], needs=trainee.needs(0, False), noise=noise[part])
        assert r["terms"]["reg/uniformity"].item() == pytest.approx(uniformity_loss(out.features["cls"]).item(), rel=1e-9)
        expected = magma_loss(out.features["block.4"], out.features["block.5"])
        assert r["terms"]["reg/magma"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert ranks[0]["terms"]["reg/magma"].item() != pytest.approx(ranks[1]["terms"]["reg/magma"].item())


@pytest.mark.slow  # a torchrun or job of ~15-20 s: make test-slow
def test_pretrain_cli_under_torchrun(tmp_path, torchrun):
    run = tmp_path / "run"
    proc = torchrun(["-m", "mimreg.cli", "pretrain", "mu-mae", "--out", str(run),
              "--set", "data.name=synthetic", "--set", "data.subset=128", "--set", "optim.batch_size=16",
              "--set", "train.epochs=1", "--set", "method.decoder_dim=32", "--set", "method.decoder_depth=1",
              "--set", "method.decoder_heads=2", "--set", "train.progress=false"], tmp_path)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["world"] == 2 and records[0]["steps_per_epoch"] == 4  # 128 / (16 x 2)
    assert any("reg/uniformity" in r for r in records)
    assert len(list((run / "checkpoints").glob("ckpt_*.pt"))) == 1
    # rank 0 alone speaks: one start line, one line per epoch, one done line; no warnings of ours
    out = proc.stdout.splitlines()
    assert sum(line.startswith("done:") for line in out) == 1, proc.stdout
    assert sum(line.startswith("epoch 1/1 step 4:") for line in out) == 1, proc.stdout
    assert sum("= 64 tokens" in line for line in out) == 1, proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow  # a torchrun or job of ~15-20 s: make test-slow
def test_a_hung_process_is_named_after_the_timeout(tmp_path):
    """Rank 1 hangs outside any collective; rank 0 gives up after the 5 s timeout (and a grace of
    half of it for the census), naming rank 1, instead of waiting torch's 30 minutes."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TIMEOUT_WORKER), str(tmp_path), "5"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    said = json.loads((tmp_path / "rank0.json").read_text())
    assert said["message"] == ("process group timed out after 5 s waiting in all_reduce on rank 0; rank 1 stopped "
                               "answering (in no collective); read that rank's output, or raise "
                               "train.dist_timeout_s if a step really takes that long")
    assert 5 <= said["waited_s"] < 10
