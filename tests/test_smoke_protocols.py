"""The smoke matrix, evaluation side (issue 14 §4): every `mimreg eval` protocol and `mimreg analyze`
on a 2-step checkpoint of every method, through the command line (in this process), each result file
written with the checkpoint's step and every headline number finite and in its range. Fine-tuning is
reached through its command line only, so the test holds whatever engine runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mimreg.cli import main
from mimreg.methods import METHODS

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = ["--train-images", "100", "--test-images", "32", "--device", "cpu"]
PROTOCOLS = {  # protocol -> its arguments beyond --checkpoint, and the prefix of the file it writes
    "linear": ([*SMALL, "--epochs", "2"], "linear-sweep_"),
    "knn": (SMALL, "knn_"),
    "lowshot": (SMALL, "lowshot_"),
    "robustness": (SMALL, "robustness_"),
    "finetune": (["--epochs", "1", "--batch-size", "16", "--fraction", "0.125", "--test-images", "16",
                  "--randaug", "none", "--device", "cpu"], "finetune_"),
}
RECONSTRUCTING = {"mae", "simmim"}  # the methods whose analysis draws reconstructions
# `make test` runs every protocol and analyze on one masked and one joint-embedding method, and k-NN
# (the cheapest: ~1 s) on every method, which loads each method's evaluated encoder (MSN, BYOL: the
# target); the rest is marked slow (CI runs it). analyze costs ~3-5 s a method (matplotlib).
DEFAULT_METHODS = ("mae", "simclr")


def case(method: str, protocol: str = "analyze"):
    fast = method in DEFAULT_METHODS or protocol == "knn"
    return pytest.param(method, protocol, marks=() if fast else pytest.mark.slow, id=f"{method}-{protocol}")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, single_thread) -> dict[str, Path]:
    """method -> the folder of a 2-step run of its plain recipe (smoke_worker's settings)."""
    import smoke_worker

    from mimreg.config import load_config
    from mimreg.engine.loop import pretrain

    root = tmp_path_factory.mktemp("smoke_protocols")
    runs = {}
    for method in sorted(METHODS):
        pretrain(load_config(f"digits/{method}", smoke_worker.smoke_sets(method, "single", 1)), root / method)
        runs[method] = root / method
    return runs


def in_range(key: str, value: float) -> bool:
    """Cosine similarities lie in [-1, 1], every other headline number is a percentage."""
    low, high = (-1.0, 1.0) if key.startswith("cos-") else (0.0, 100.0)
    return math.isfinite(value) and low - 1e-6 <= value <= high + 1e-6


def test_every_method_has_a_plain_recipe(checkpoints):
    assert set(checkpoints) == {"mae", "simmim", "msn", "simclr", "vicreg", "barlow", "byol", "mse", "lejepa"}


@pytest.mark.parametrize("method, protocol", [case(m, p) for m in sorted(METHODS) for p in PROTOCOLS])
def test_eval_protocol_writes_its_result(checkpoints, method, protocol, capsys):
    run = checkpoints[method]
    args, prefix = PROTOCOLS[protocol]
    code = main(["eval", protocol, "--checkpoint", str(run), *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    [path] = sorted((run / "evals").glob(f"{prefix}*.json"))
    report = json.loads(path.read_text())
    assert (report["protocol"], report["recipe"], report["step"]) == (protocol, f"digits/{method}", 2)
    assert report["headline"], report
    for key, value in report["headline"].items():
        assert in_range(key, value), (key, value)
    if protocol == "finetune":
        result = report["result"]
        assert result["epochs"] == 1 and result["steps"] >= 1 and math.isfinite(result["train_loss"])
        assert f"wrote {path}" in out


@pytest.mark.parametrize("method, protocol", [case(m) for m in sorted(METHODS)])
def test_analyze_draws_every_picture(checkpoints, method, protocol, capsys):
    run = checkpoints[method]
    code = main(["analyze", "--checkpoint", str(run), "--test-images", "32", "--embeddings", "tsne",
                 "--device", "cpu"])
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((run / "analysis.json").read_text())
    assert (report["recipe"], report["step"]) == (f"digits/{method}", 2)
    expected = {"attention", "pca", "tsne", "curves", "spectrum"} | ({"reconstructions"} if method in RECONSTRUCTING
                                                                    else set())
    assert set(report["pictures"]) == expected
    for picture in report["pictures"].values():
        assert Path(picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    for pool, rank in report["effective_rank"].items():
        assert 1.0 <= rank <= 32 + 1e-6, (pool, rank)  # at most the 32 test images (and the width, 128)
