"""`mimreg demo`: train, evaluate and draw each recipe, then one report page for all of them."""

import json
import re

from mimreg.engine.checkpoint import list_checkpoints
from mimreg.eval.results import load_results

PICTURES = {"reconstructions", "attention", "pca", "pacmap", "tsne", "curves", "spectrum"}


def test_demo_writes_the_report_page_with_every_picture(demo_run):
    out_dir, out = demo_run
    page = (out_dir / "report.html").read_text()
    assert "<title>mimreg demo on synthetic</title>" in page
    for recipe in ("mae", "u-mae"):
        run = out_dir / recipe
        assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt_00000004.pt"]
        found = {(r["protocol"], r["pool"]) for r in load_results(run)}
        assert found == {(p, pool) for p in ("linear", "knn", "erank") for pool in ("cls", "mean")}
        analysis = json.loads((run / "analysis.json").read_text())
        assert set(analysis["pictures"]) == PICTURES
        assert analysis["linear_top1"] is not None  # evaluated before it was drawn: the titles show it
        assert f"<h2>{recipe}</h2>" in page
    assert page.count("<img ") == 2 * 7 + 3  # each run's pictures, PaCMAP and t-SNE side by side, curves
    # console: the results table with the Davies-Bouldin index, then seconds per picture, then the page
    assert re.search(r"\| u-mae +\| mean +\|", out) and "DBI" in out
    assert re.search(r"\| recipe \| attention \| curves \| features \| pacmap \| pca \| reconstructions", out)
    assert f"report: {out_dir / 'report.html'}" in out
