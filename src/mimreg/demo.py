"""`mimreg demo`: pretrain several recipes on one small dataset, evaluate, draw, report."""

from __future__ import annotations

import time
from pathlib import Path

from mimreg.analysis.analyze import analyze
from mimreg.analysis.report import write_report
from mimreg.commands import evaluate
from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.eval import format_table

POOLS = ("cls", "mean")


def run_demo(recipes: list[str], data: str = "digits", data_root: str | None = None, epochs: int | None = None,
             out: Path = Path("runs/demo"), overrides: list[str] = ()) -> list[dict]:
    """Train each recipe on the digits preset (or `data`), evaluate it (linear, kNN, effective
    rank), draw its pictures, and write one report page for all of them (out/report.html)."""
    rows, seconds = [], {}
    start = time.time()
    for recipe in recipes:
        sets = list(overrides)
        if data != "digits":
            sets += [f"data.name={data}", "data.img_size=32"] + ([f"data.root={data_root}"] if data_root else [])
        if epochs is not None:
            sets.append(f"train.epochs={epochs}")
        cfg = load_config(f"digits/{recipe}", sets)
        run_dir = out / recipe
        print(f"== {recipe}: {cfg.description}", flush=True)
        began = time.time()
        result = pretrain(cfg, run_dir, resume=True)  # a finished run is reused, a crashed one continued
        minutes = (time.time() - began) / 60
        report = evaluate(result.checkpoint, ("linear", "knn", "erank"), pools=POOLS, out_dir=run_dir,
                          echo=lambda text: None)
        res = report["results"]
        analysis = analyze(result.checkpoint, out_dir=run_dir, echo=lambda text: None)
        seconds[recipe] = analysis["seconds"]
        for pool in POOLS:
            rows.append({"recipe": recipe, "pool": pool, "linear": res["linear"][pool]["top1"],
                         "knn10": res["knn"][pool]["knn10_euclidean"], "knn20cos": res["knn"][pool]["knn20_cosine"],
                         "erank": res["erank"][pool]["effective_rank"], "DBI": analysis["davies_bouldin"][pool],
                         "minutes": minutes})
    columns = ["recipe", "pool", "linear", "knn10", "knn20cos", "erank", "DBI", "minutes"]
    print(format_table(rows, columns, {"erank": ".1f", "DBI": ".2f", "minutes": ".1f"}))
    pictures = sorted({name for per_run in seconds.values() for name in per_run})
    print(format_table([{"recipe": r, **s} for r, s in seconds.items()], ["recipe", *pictures],
                       {name: ".1f" for name in pictures}))
    page = write_report([out / r for r in recipes], out / "report.html", title=f"mimreg demo on {data}")
    print(f"report: {page} (total {(time.time() - start) / 60:.1f} min; seconds per picture above)")
    return rows
