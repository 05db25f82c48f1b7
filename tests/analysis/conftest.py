"""One small `mimreg demo` for the analysis, report and browser tests, and a demo-sized study made
of copies of its u-mae run under the demo's four recipe names (with different linear scores)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from support import built_once, linear_result_file

STUDY = ("mae", "u-mae", "m-mae", "mu-mae")
DEMO_SETS = ["--set", "method.decoder_dim=32", "--set", "method.decoder_depth=1", "--set", "method.decoder_heads=2",
             "--set", "optim.batch_size=32", "--set", "train.device=cpu", "--set", "train.progress=false",
             "--set", "data.subset=128"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """`mimreg demo` of mae and u-mae, 1 epoch of 128 synthetic images each: (its folder, what it
    printed). Every run in it is evaluated and analysed. Do not modify."""
    def build(folder: Path) -> None:
        from mimreg.cli import main

        printed = io.StringIO()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # see tests/conftest.py one_thread
        try:
            with contextlib.redirect_stdout(printed):
                code = main(["demo", "--data", "synthetic", "--epochs", "1", "--recipes", "mae,u-mae",
                             "--out", str(folder / "demo"), *DEMO_SETS])
        finally:
            torch.set_num_threads(threads)
        assert code == 0, printed.getvalue()[-2000:]
        (folder / "printed.txt").write_text(printed.getvalue())

    folder = built_once(tmp_path_factory, "demo", build)
    return folder / "demo", (folder / "printed.txt").read_text()


@pytest.fixture(scope="session")
def analysed_run(demo_run) -> Path:
    """The demo's u-mae run: its evaluations (linear, knn, erank) and every picture. Do not modify."""
    return demo_run[0] / "u-mae"


@pytest.fixture(scope="session")
def study(analysed_run, tmp_path_factory) -> list[Path]:
    """Four run folders named like the demo's recipes; run i's linear top-1 is the first's + i."""
    folder = tmp_path_factory.mktemp("study")
    runs = []
    for i, name in enumerate(STUDY):
        run = Path(shutil.copytree(analysed_run, folder / name))
        analysis = json.loads((run / "analysis.json").read_text())
        # the copies' pictures are their own files, as `mimreg analyze` of that folder would write them
        analysis["pictures"] = {k: str(run / Path(v).relative_to(analysed_run)) for k, v in analysis["pictures"].items()}
        (run / "analysis.json").write_text(json.dumps(analysis))
        path = linear_result_file(run)
        linear = json.loads(path.read_text())
        linear["result"]["top1"] += i
        path.write_text(json.dumps(linear))
        runs.append(run)
    return runs


@pytest.fixture(scope="session")
def study_report(study, tmp_path_factory) -> Path:
    """The report page of the study. Do not modify."""
    from mimreg.analysis.report import write_report

    return write_report(study, tmp_path_factory.mktemp("report") / "report.html", title="mimreg demo on synthetic")
