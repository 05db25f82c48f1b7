"""Shared helpers: tiny, fast configs on the in-memory `synthetic` dataset (512 train / 256 test
32x32 images, 10 classes), and one small pretrained run for tests that need a checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

# Two test workers share the 2 cores: one thread each. With torch's (and BLAS's) default of a thread
# per core, each worker's threads wait on the core the other one holds, and small solves (the probe's
# L-BFGS) ran 50x slower (497 s instead of 9 s). Set before torch starts its thread pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from mimreg.config import Config, load_config  # noqa: E402
from support import built_once  # noqa: E402

# vit_micro/4 on 32x32 synthetic images with a one-block decoder: ~0.1 s per step of 32 images on CPU.
TINY_SETS = (
    "data.name=synthetic",
    "data.img_size=32",
    "model.arch=vit_micro",
    "method.decoder_dim=32",
    "method.decoder_depth=1",
    "method.decoder_heads=2",
    "optim.batch_size=32",
    "train.epochs=1",
    "train.device=cpu",
    "train.progress=false",
    "train.log_every=1",
    "train.monitor_every=1",
    # the RankMe / alpha-ReQ monitor measures after a run's last step: ~1 s more per tiny run, off
    # here; tests/engine/test_rep_monitor.py and the fault tests switch it on
    "train.rep_monitor_every=0",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped without one")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The order pytest-xdist hands test files to the two workers (--dist loadfile, in collection order):
# the longest first, so that the run does not end on one worker while the other waits; the files that
# read the demo fixture after test_analyze.py, which builds it, so that no second worker builds it too.
LONGEST_FIRST = ("tests/test_smoke_matrix.py", "tests/analysis/test_analyze.py", "tests/engine/test_faults.py",
                 "tests/test_readme_commands.py", "tests/engine/test_loop.py", "tests/methods/test_joint_training.py",
                 "tests/methods/test_masked_training.py", "tests/engine/test_distributed.py")
READ_THE_DEMO = ("tests/analysis/test_report_page.py", "tests/analysis/test_browser.py",
                 "tests/analysis/test_demo.py", "tests/analysis/test_study_report.py")


def file_rank(item) -> int:
    path = item.nodeid.split("::")[0]
    if path in LONGEST_FIRST:
        return LONGEST_FIRST.index(path) - len(LONGEST_FIRST)
    return 1 if path in READ_THE_DEMO else 0


def pytest_collection_modifyitems(config, items):
    """Longest test files first and the demo's readers last (a stable sort: each file's tests keep
    their order); tests marked `cuda` skip, saying so, where torch sees no CUDA device."""
    items.sort(key=file_rank)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def as_override(key: str, value) -> str:
    """`train__epochs=2` style keyword -> the `--set` string `train.epochs=2` (value as YAML)."""
    if isinstance(value, str):
        text = value
    else:  # flow-style YAML; a plain scalar comes with a "..." document-end marker
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"{key.replace('__', '.')}={text}"


def tiny_config(recipe: str = "mae", *sets: str, **overrides) -> Config:
    """A recipe on the digits preset, switched to tiny synthetic runs.

    Extra overrides come as `key=value` strings (`"regularizers.magma.start_epoch=1"`) or as
    keywords with `__` for dots (`train__epochs=2`, `data__subset=128`, `regularizers=[]`).
    """
    extra = list(sets) + [as_override(k, v) for k, v in overrides.items()]
    return load_config(f"digits/{recipe}", [*TINY_SETS, *extra])


@pytest.fixture(name="tiny_sets", scope="session")
def tiny_sets_fixture() -> tuple[str, ...]:
    """The `--set` strings of `tiny_config` (for runs started as a command or job)."""
    return TINY_SETS


@pytest.fixture(name="tiny_config", scope="session")
def tiny_config_fixture():
    """The `tiny_config(recipe="mae", *sets, **overrides) -> Config` helper."""
    return tiny_config


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread. On the 2-core test machine with other work running, torch's
    default 2 threads make these tiny models ~20x slower (threads wait for a busy core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_thread():
    """torch on one CPU thread for the tests of a module (see `one_thread`); use it with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A finished u-mae run: 3 epochs of 256 synthetic images (24 steps of 32, lr 1e-3 after one
    warmup epoch), logged and monitored every 2 steps, checkpoints of steps 16 and 24 kept.
    Shared: do not modify it; the `tiny_run` fixture gives a private copy."""
    from mimreg.engine.loop import pretrain

    def build(folder: Path) -> None:
        cfg = tiny_config("u-mae", train__epochs=3, data__subset=256, optim__warmup_epochs=1, train__log_every=2,
                          train__monitor_every=2)
        with one_thread():
            pretrain(cfg, folder / "run")

    return built_once(tmp_path_factory, "tiny_run", build) / "run"


@pytest.fixture
def tiny_run(tiny_run_dir, tmp_path) -> Path:
    """A private copy of the shared finished tiny run, free to modify."""
    return Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))


def run_torchrun(args: list[str], cwd: Path, timeout: int = 240):
    """Run `python -m torch.distributed.run --standalone --nproc_per_node=2 ARGS` with this checkout's
    src/ on the path and one thread per process; fail the test with the output tail on error."""
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(name="torchrun", scope="session")
def torchrun_fixture():
    return run_torchrun


def run_worker_ranks(worker: Path, folder: Path, *args: str) -> list[dict]:
    """Run a worker script under torchrun with `folder` and `args` as its arguments; return what
    each of the 2 ranks saved as folder/rank<r>.pt."""
    run_torchrun([str(worker), str(folder), *args], folder)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(name="worker_ranks", scope="session")
def worker_ranks_fixture():
    return run_worker_ranks


def trained_on_synthetic(cfg, checkpoint) -> tuple[torch.nn.Module, torch.Tensor]:
    """The trainee of a finished run in eval mode, and the 256 synthetic test images as its
    evaluation sees them (the tests' measure of collapse after a short training)."""
    from mimreg.data import dataset_stats, eval_transform, load_dataset
    from mimreg.engine.build import build_trainee
    from mimreg.engine.checkpoint import load_checkpoint

    trainee = build_trainee(cfg, 10)
    trainee.load_state_dict(load_checkpoint(checkpoint)["model"])
    trainee.eval()
    test = load_dataset("synthetic", "test", None)
    transform = eval_transform(cfg.img_size, *dataset_stats("synthetic"))
    return trainee, torch.stack([transform(test[i][0]) for i in range(len(test))])


@pytest.fixture(name="trained_on_synthetic", scope="session")
def trained_on_synthetic_fixture():
    return trained_on_synthetic


def load_module_from(path: Path):
    """Import a test helper script (e.g. a torchrun worker) by its file path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="load_module", scope="session")
def load_module_fixture():
    return load_module_from
