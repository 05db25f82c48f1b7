"""The smoke matrix, training side (issue 14 §4): every recipe trained 2 steps uninterrupted, and again
halted after step 1 and resumed, under one process, 2-process DDP and FSDP (torchrun, gloo),
`optim.accum_steps=2` and `train.precision=bf16`. The resumed run must end at the same step with the
same weights and the same records as the uninterrupted one, every logged number finite.

One process (or one 2-process group) runs every recipe of a mode in sequence (tests/smoke_worker.py),
since starting torch is most of a tiny run's cost. The modes beyond one process are marked slow:
`make test` leaves them out and CI runs them after it (.ci/run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mimreg.engine.checkpoint import load_checkpoint
from mimreg.engine.metrics import read_metrics
from smoke_worker import smoke_entries

WORKER = Path(__file__).with_name("smoke_worker.py")
STEPS, HALT = 2, 1  # smoke_worker's
DISTRIBUTED = ("ddp", "fsdp")  # under torchrun
MODES = [pytest.param("single"),
         *(pytest.param(mode, marks=pytest.mark.slow) for mode in ("accum", "bf16", "ddp", "fsdp"))]
RECORD_KINDS = ("train", "epoch", "knn")  # what a run logs per step, per epoch, and its online k-NN


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, torchrun):
    """mode -> (its folder, smoke_worker's results by recipe); each mode runs once, on first use."""
    root = tmp_path_factory.mktemp("smoke")
    done: dict[str, tuple[Path, dict | None, str | None]] = {}

    def run(mode: str) -> tuple[Path, dict]:
        if mode not in done:
            out = root / mode
            out.mkdir()
            failure = None
            if mode in DISTRIBUTED:
                try:  # the worker exits 1 when a recipe failed: results.json says which and why
                    torchrun([str(WORKER), str(out), mode], out, timeout=900)
                except AssertionError as err:
                    failure = str(err)
            else:
                import smoke_worker

                smoke_worker.run_all(out, mode, [])
            results = out / "results.json"
            done[mode] = out, json.loads(results.read_text()) if results.is_file() else None, failure
        out, results, failure = done[mode]
        assert results is not None, failure  # every recipe of the mode fails with the output's tail
        return out, results

    return run


def logged(run: Path, kind: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run / "metrics.jsonl")
            if r["kind"] == kind]


def assert_finite_numbers(records: list[dict], where: str) -> None:
    for record in records:
        for key, value in record.items():
            if isinstance(value, float):
                assert math.isfinite(value), (where, record["step"], key, value)


def final_checkpoint(run: Path) -> dict:
    path = run / "checkpoints" / f"ckpt_{STEPS:08d}.pt"
    assert path.is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())
    return load_checkpoint(path)


@pytest.mark.parametrize("recipe", smoke_entries())  # every recipe, and a few on a ResNet (RECIPE@resnet18)
@pytest.mark.parametrize("mode", MODES)
def test_recipe_halts_and_resumes_to_the_uninterrupted_run(matrix, mode, recipe):
    folder, results = matrix(mode)
    assert results[recipe]["error"] is None, results[recipe]["error"]
    full, resumed = folder / recipe / "full", folder / recipe / "resumed"
    for run in (full, resumed):
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["steps"], summary["halted"]) == (STEPS, False), (run.name, summary)
        train = logged(run, "train")
        assert [r["step"] for r in train] == list(range(1, STEPS + 1)), run.name
        assert "loss" in train[-1]
        for kind in RECORD_KINDS:
            assert_finite_numbers(logged(run, kind), f"{run.name} {kind}")
    assert len(logged(resumed, "start")) == 1  # the resume rewrote what followed step 1, nothing before

    for kind in RECORD_KINDS:
        want, got = logged(full, kind), logged(resumed, kind)
        assert [r["step"] for r in got] == [r["step"] for r in want], kind
        for a, b in zip(got, want):
            assert set(a) == set(b), (kind, a["step"], set(a) ^ set(b))
            for key, value in b.items():
                expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-6, abs=1e-7)
                assert a[key] == expected, (kind, a["step"], key)

    want, got = final_checkpoint(full), final_checkpoint(resumed)
    assert got["step"] == want["step"] == STEPS
    assert got["model"].keys() == want["model"].keys()
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=0, atol=1e-6, msg=key)
