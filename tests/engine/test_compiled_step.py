"""train.compile: the whole step through torch.compile gives eager's losses, and its checkpoints and
resume are those of an eager run (traced with the aot_eager backend: the same graphs and autograd
split as inductor, without its code generation, which takes minutes on a small CPU)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from mimreg.engine import compiled_step
from mimreg.engine.checkpoint import load_checkpoint
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# MAE on 64 images, batches of 32: two epochs of two steps, mask and augmentation seeded per step
SETS = ("data.subset=64", "train.epochs=2", "optim.warmup_epochs=1", "monitor=[]", "train.knn_every=0",
        "optim.blr=1e-3")


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config, single_thread):
    """(eager run folder, compiled run folder halted after step 3 and resumed)."""
    root = tmp_path_factory.mktemp("compiled")
    pretrain(tiny_config("mae", *SETS), root / "eager")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled_step, "BACKEND", "aot_eager")
        torch._dynamo.reset()
        counters.clear()
        pretrain(tiny_config("mae", *SETS, "train.compile=true", "train.halt_after_steps=3"), root / "compiled")
        pretrain(tiny_config("mae", *SETS, "train.compile=true"), root / "compiled", resume=True)
        assert counters["stats"]["unique_graphs"] >= 1  # the step did run through torch.compile
    yield root / "eager", root / "compiled"
    torch._dynamo.reset()  # the compiled graphs hold the trainee


def test_compiled_step_gives_the_eager_losses_through_a_resume(runs):
    eager, compiled = runs
    want, got = losses(eager), losses(compiled)
    assert len(want) == len(got) == 4
    # the losses are ~1 (norm-pix MSE); compilation may reorder float sums: 1e-4 of that scale
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert want[-1] < want[0]  # the steps train


def test_compiled_checkpoint_has_the_eager_state_dict_keys(runs):
    eager, compiled = (load_checkpoint(folder)["model"] for folder in runs)
    assert not [k for k in compiled if "_orig_mod" in k]
    assert list(compiled) == list(eager)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-4)


def test_cuda_graphs_on_cpu_are_refused(tmp_path, tiny_config):
    cfg = tiny_config("mae", "train.compile=true", "train.compile_mode=reduce-overhead")
    with pytest.raises(ConfigError, match="reduce-overhead replays CUDA graphs.*use train.compile_mode default"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the folder was made


def test_compile_mode_without_compile_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="compile_mode='max-autotune' needs train.compile: true"):
        tiny_config("mae", "train.compile_mode=max-autotune")
