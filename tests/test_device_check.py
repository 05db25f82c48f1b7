"""benchmarks/device_check.sh --smoke: every section of the GPU check runs on the CPU at tiny sizes
and leaves output that parses, in the folder it is given (never in benchmarks/results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from mimreg.config import load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the CPU run of device_check.sh takes ~50 s: in `make test-slow`
SECTIONS = ("cuda_tests", "vs_peers_base224", "vs_peers_tiny32", "data_pipeline", "mst", "finetune", "pretrain",
            "recipes_bf16")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device_check")
    results = ROOT / "benchmarks" / "results"
    before = sorted(results.rglob("*")) if results.exists() else []
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--smoke", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (sorted(results.rglob("*")) if results.exists() else []) == before  # nothing written there
    return out


def read(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def test_every_section_ran_and_succeeded(smoke):
    summary = read(smoke, "summary.json")
    assert summary["in_process"] is True
    for name in SECTIONS:
        assert summary[name]["exit_code"] == 0, name
        assert (smoke / f"{name}.txt").stat().st_size > 0, name


def test_cuda_tests_were_collected_and_skipped_on_cpu(smoke):
    suite = ElementTree.parse(smoke / "cuda_tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 4
    assert int(suite.get("failures")) == int(suite.get("errors")) == 0
    assert int(suite.get("skipped")) == int(suite.get("tests"))  # no CUDA here


@pytest.mark.parametrize("preset", ["base224", "tiny32"])
def test_peer_comparison_has_rates_and_ratios(smoke, preset):
    report = read(smoke, f"vs_peers_{preset}.json")
    impls = report["implementations"]
    assert {"mimreg", "reference"} <= set(impls)
    for entry in impls.values():
        assert entry["img_per_s"] > 0 and 0 < entry["fraction_of_gemm_peak"]
        assert entry["vs_reference"] > 0
    assert "lightly" in impls or any("lightly skipped" in n for n in report["notes"])
    if "lightly" in impls:
        assert impls["lightly"]["vs_lightly"] == pytest.approx(1.0)
    assert report["setting"]["device"] == "cpu" and report["step_gflop"] > 0


def test_data_mst_and_pretrain_sections_have_their_numbers(smoke):
    data = read(smoke, "data_pipeline.json")
    assert data["mae"]["device_img_per_s"] > 0 and data["mae"]["ratio"] > 0
    mst = read(smoke, "mst.json")["rows"][0]
    assert mst["agree"] is True and mst["scipy/ours"] > 0
    run = read(smoke, "pretrain.json")
    assert run["stopped_by_time"] is True and run["exit_code"] == 143  # SIGTERM after its time budget
    assert run["steps"] >= 1 and run["img_per_s_end_to_end"] > 0 and run["epochs_per_minute"] > 0
    assert run["images_per_epoch"] == 256
    assert (smoke / "pretrain_work" / "run" / "checkpoints").is_dir()  # the stop wrote a checkpoint


def test_fine_tuning_resumes_to_the_uninterrupted_run(smoke):
    report = read(smoke, "finetune.json")
    assert {name: c["exit_code"] for name, c in report["commands"].items()} == {
        "pretrain": 0, "whole": 0, "halted": 0, "resumed": 0}
    assert report["epochs"] == 2 and report["resumed_losses"] == report["epoch_losses"]
    assert report["resumed_losses_max_rel_diff"] == 0.0 and report["resumed_weights_equal"] is True


def test_recipes_section_ran_each_recipe_in_bf16_and_resumed_it_exactly(smoke):
    results = read(smoke, "recipes_bf16/results.json")
    assert list(results) == ["mae", "msn"]  # the smoke's two; on CUDA every recipe
    for recipe, result in results.items():
        assert result["error"] is None, result["error"]
        assert 0 < result["loss"] < 100 and result["weight_difference"] == 0.0  # the CPU is deterministic
        for run in ("full", "resumed"):
            cfg = load_config(smoke / "recipes_bf16" / recipe / run / "config.yaml")
            assert (cfg.train.precision, cfg.train.device) == ("bf16", "cpu")
            assert (smoke / "recipes_bf16" / recipe / run / "checkpoints" / "ckpt_00000002.pt").is_file()
    log = (smoke / "recipes_bf16.txt").read_text()
    assert "mae: ok, loss" in log and "msn: ok, loss" in log
