"""`mimreg report`: one self-contained HTML page for a study of several runs.

Styles and images are embedded (PNG as data: URIs), there is no script, and the page asks the
network for nothing, so it can be mailed, archived or printed as it is.
"""

from __future__ import annotations

import base64
import html
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mimreg.analysis.curves import curve_keys, plot_run_curves
from mimreg.analysis.embedding import TITLES, embedding_title, plot_embedding_panels
from mimreg.analysis.evaluations import flat_metrics, linear_top1, read_evaluations
from mimreg.analysis.seed_report import seed_section
from mimreg.engine.checkpoint import config_of, latest_checkpoint, load_checkpoint
from mimreg.engine.metrics import read_metrics
from mimreg.engine.rep_monitor import last_values
from mimreg.engine.resume_rules import changes_no_number, differing_keys
from mimreg.errors import MimregError
from mimreg.eval.report import format_value
from mimreg.io import atomic_write

STYLE_FILE = Path(__file__).with_name("report.css")
# the numbers the comparison table shows, by the last part of their path in an evaluation, and their names
HEADLINE = {"top1": "top-1", "knn10_euclidean": "k=10 euclid.", "knn20_cosine": "k=20 cosine",
            "effective_rank": "", "mean": "mean", "davies_bouldin": "", "rankme": "RankMe", "alpha_req": "α-ReQ"}
PROTOCOL_NAMES = {"knn": "kNN", "erank": "effective rank", "lowshot": "low-shot", "monitor": "last"}
OTHER_POOLS = ("mean",)  # the comparison shows the cls token's numbers; each run's section shows every pool
PROTOCOL_ORDER = ("linear", "knn", "lowshot", "robustness", "erank")
PICTURE_ORDER = [("curves", "Training curves"), ("reconstructions", "Reconstructions"),
                 ("attention", "Attention of the cls token to each patch in the last block, each map stretched to its own "
                   "min..max (dark: least, bright: most)"), ("pca", "Patch features (PCA as RGB)"),
                 ("pacmap", "PaCMAP"), ("tsne", "t-SNE"), ("umap", "UMAP"), ("spectrum", "Singular values")]
WIDE = {"curves", "reconstructions", "attention", "pca"}
# columns that describe how a run was made, not how good it is: shown without a difference to the first
# run (pretraining minutes follow the machine's load as much as the method)
NOT_RESULTS = ("steps", "pretrain min")


@dataclass
class RunView:
    """What the page shows of one run folder."""

    path: Path
    name: str
    config: dict
    summary: dict
    records: list[dict]
    evaluations: dict[str, dict]
    analysis: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # where config.yaml and the checkpoint disagree

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe") or self.analysis.get("recipe") or self.name)

    def pretrain_seconds(self) -> float | None:
        """Wall-clock seconds of training: the metrics clock restarts on resume, so segments add up."""
        times = [r["time"] for r in self.records if isinstance(r.get("time"), (int, float))]
        if not times:
            return None
        total, last = 0.0, 0.0
        for t in times:
            if t < last:  # a resumed segment
                total += last
            last = t
        return total + last

    def steps(self) -> int | None:
        steps = self.summary.get("steps")
        return int(steps) if steps is not None else max((r.get("step", 0) for r in self.records), default=None)

    def headline(self) -> dict[str, float]:
        """The comparison table's numbers by column key ("linear cls/top1"): evaluation headlines,
        the last RankMe / alpha-ReQ of the representation monitor, Davies-Bouldin index, steps,
        pretraining time."""
        out = {}
        order = sorted(self.evaluations, key=lambda p: (PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else 99, p))
        for protocol in order:
            for path, value in flat_metrics(self.evaluations[protocol]).items():
                if path.rsplit("/", 1)[-1] in HEADLINE and path.split("/")[0] not in OTHER_POOLS:
                    out[f"{protocol} {path}"] = value
        for key, (_, value) in last_values(self.records).items():  # logged during pretraining
            measure, feature = key.split("/")
            if feature not in OTHER_POOLS:
                out[f"monitor {feature}/{measure}"] = value
        dbi = (self.analysis.get("davies_bouldin") or {}).get("cls")
        if dbi is not None:
            out["DBI cls/davies_bouldin"] = dbi
        seconds = self.pretrain_seconds()
        out.update({"steps": self.steps(), "pretrain min": seconds / 60 if seconds is not None else None})
        return {k: v for k, v in out.items() if v is not None}


def read_run(path: str | Path) -> RunView:
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise MimregError(f"{path} is not a run folder (no config.yaml); pass the --out folder of `mimreg pretrain`")
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    analysis = json.loads((path / "analysis.json").read_text()) if (path / "analysis.json").is_file() else {}
    config, warnings = run_config(path)
    own_data = (config.get("data") or {}).get("name")
    return RunView(path, path.name, config, summary, read_metrics(path / "metrics.jsonl"),
                   read_evaluations(path, own_data), analysis, warnings)


def run_config(path: Path) -> tuple[dict, list[str]]:
    """The config the run trained with, and warnings: its latest checkpoint's config (config.yaml is a
    copy that a hand may have edited), each disagreement of config.yaml named. Without a checkpoint,
    config.yaml, whose YAML error is then a one-line error naming it."""
    written, problem = read_config_yaml(path / "config.yaml")
    found = latest_checkpoint(path / "checkpoints")
    if found is None:
        if problem:
            raise MimregError(f"{problem}, and the run has no checkpoint whose config could stand in; fix the file")
        return written, []
    stored = config_of(load_checkpoint(found), found)
    if problem:
        warnings = [f"{problem}; shown: the config stored in {found}"]
    else:
        changed = [k for k in differing_keys(written, stored) if not changes_no_number(k)]
        warnings = [f"{path / 'config.yaml'} differs from the config {found.name} trained with in {changed}; "
                    "shown: the checkpoint's"] if changed else []
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return stored, warnings


def read_config_yaml(path: Path) -> tuple[dict, str | None]:
    """The mapping of a config.yaml, or ({}, the problem in one line)."""
    try:
        written = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        return {}, f"{path} is not valid YAML ({' '.join(str(err).split())})"
    if written is not None and not isinstance(written, dict):
        return {}, f"{path} holds a {type(written).__name__}, not a mapping of config keys"
    return written or {}, None


def write_report(run_dirs, out, *, title: str | None = None, analyze_missing: bool = True, echo=print,
                 seeds: bool = False, group_by: list[str] | None = None, baseline: str | None = None) -> Path:
    """Write the HTML page for `run_dirs` to `out`; runs without analysis.json are analysed first
    (`mimreg analyze` with its defaults) unless analyze_missing is False. seeds: the page opens with
    the runs grouped by `group_by` (default: every setting that differs but the seed), each group's
    mean and interval over seeds and its difference to `baseline` (analysis/seed_report.py)."""
    if not run_dirs:
        raise MimregError("mimreg report needs at least one run folder")
    runs = [read_run(p) for p in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two runs/<x>/mae folders: tell them apart by their parents
        for r in runs:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    for run in runs:
        if not run.analysis and analyze_missing:
            from mimreg.analysis.analyze import analyze

            echo(f"analysing {run.path} (no analysis.json yet)")
            analyze(run.path, echo=lambda text: None)
            run.analysis = json.loads((run.path / "analysis.json").read_text())
    title = title or f"mimreg report: {', '.join(r.name for r in runs)}"
    with tempfile.TemporaryDirectory() as scratch:
        shared = study_pictures(runs, Path(scratch))
        section = seed_section(run_dirs, Path(scratch), figure, esc, group_by, baseline) if seeds else ""
        page = render_page(title, runs, shared, section)
    path = atomic_write(out, lambda handle: handle.write(page), binary=False)
    path.chmod(0o644)  # a page to share: readable by others, as a plain file write would leave it
    return path


def study_pictures(runs: list[RunView], folder: Path) -> dict[str, Path]:
    """The pictures across runs: their 2-D maps side by side and the curves they all log."""
    out = {}
    for method in ("pacmap", "tsne", "umap"):
        panels, class_names = [], None
        for run in runs:
            npz = run.path / "analysis" / f"{method}.npz"
            if npz.is_file():
                data = np.load(npz)
                dbi = (run.analysis.get("davies_bouldin") or {}).get("cls")
                panels.append((data["coords"], data["labels"],  # the linear score as evaluated now
                               embedding_title(method, dbi, linear_top1(run.evaluations), run.name)))
                class_names = class_names or [str(c) for c in data["class_names"]]
        if len(panels) > 1:
            out[method] = plot_embedding_panels(panels, class_names, folder / f"{method}.png")
    logged = [set(curve_keys(r.records)) for r in runs if r.records]
    common = [k for k in curve_keys([rec for r in runs for rec in r.records]) if logged and all(k in s for s in logged)]
    if len(runs) > 1 and common:
        out["curves"] = plot_run_curves({r.name: r.records for r in runs if r.records}, folder / "curves.png",
                                        keys=common, columns=4)
    return out


# ---------------------------------------------------------------- HTML
def esc(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def figure(png: Path, caption: str, wide: bool = False) -> str:
    return (f'<figure class="{"wide" if wide else ""}"><img src="{data_uri(png)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def number(value, key: str = "") -> str:
    """As the evaluation tables print it: 1 decimal for accuracies (%), 3 significant digits else."""
    return esc(format_value(value, key))


def signed(delta: float, key: str) -> str:
    if delta == 0:
        return "±0"
    return ("+" if delta > 0 else "−") + number(abs(delta), key)


def column_label(key: str) -> str:
    """'linear cls/top1' -> 'linear top-1 (cls)'; 'knn cls/knn10_euclidean' -> 'kNN k=10 euclid. (cls)'."""
    protocol, _, path = key.partition(" ")
    if not path:
        return key
    *middle, leaf = path.split("/")
    pool = f" ({middle[0]})" if middle and middle[0] in ("cls", "mean") else ""
    words = [PROTOCOL_NAMES.get(protocol, protocol), *(middle[1:] if pool else middle), HEADLINE.get(leaf, leaf)]
    return " ".join(w for w in words if w) + pool


def comparison_table(runs: list[RunView]) -> str:
    """Runs as rows, headline numbers as columns, each with its difference to the first run."""
    rows = [r.headline() for r in runs]
    columns = [c for c in dict.fromkeys(k for row in rows for k in row)]
    head = "".join(f'<th title="{esc(c)}">{esc(column_label(c))}</th>' for c in columns)
    body = []
    for i, (run, row) in enumerate(zip(runs, rows)):
        cells = []
        for c in columns:
            value = row.get(c)
            text = "–" if value is None else number(value, c)
            base = rows[0].get(c)
            if i and value is not None and base is not None and c not in NOT_RESULTS:
                text += f' <span class="delta">{signed(value - base, c)}</span>'
            cells.append(f"<td>{text}</td>")
        body.append(f'<tr><th class="text"><a href="#run-{i}">{esc(run.name)}</a></th>{"".join(cells)}</tr>')
    note = (f'<p class="note">Grey: difference to the first run ({esc(runs[0].name)}), for results (not for '
            "steps and pretraining minutes, which say how a run was made). Features: the cls token "
            "(every pool is in each run's section). Accuracies in %; DBI: Davies-Bouldin index of a random "
            "10-class test sample (lower = tighter classes); last RankMe / α-ReQ: the representation "
            "monitor's last values during pretraining (README: Representation monitors).</p>"
            if len(runs) > 1 else "")
    return (f'<div class="table-wrap"><table class="compare"><thead><tr><th class="text">run</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{note}')


def key_config(run: RunView) -> list[tuple[str, str]]:
    cfg = run.config
    method = dict(cfg.get("method") or {})
    name = method.pop("name", "?")
    options = ", ".join(f"{k} {v}" for k, v in method.items() if not isinstance(v, (dict, list)))
    regs = [r for r in cfg.get("regularizers") or []]
    reg_text = "; ".join(
        f"{r.get('name')} ×{r.get('weight')}" + (f" from epoch {r.get('start_epoch')}" if r.get("start_epoch") else "")
        + (f" for {r.get('duration')} epochs" if r.get("duration") is not None else "") for r in regs) or "none"
    model, data, optim, train = (cfg.get(k) or {} for k in ("model", "data", "optim", "train"))
    lr = f"lr {optim['lr']}" if optim.get("lr") is not None else f"blr {optim.get('blr')}"
    seconds = run.pretrain_seconds()
    return [("recipe", run.recipe), ("method", f"{name} ({options})" if options else name),
            ("regularizers", reg_text),
            ("monitored", ", ".join(m.get("name", str(m)) if isinstance(m, dict) else str(m)
                                    for m in cfg.get("monitor") or []) or "none"),
            ("model", f"{model.get('arch')}" + (f"/{model['patch_size']}" if model.get("patch_size") else "")),
            ("data", f"{data.get('name')}" + (f", {data.get('subset')} images" if data.get("subset") else "")),
            ("optimisation", f"batch {optim.get('batch_size')} × accum {optim.get('accum_steps', 1)}, {lr}, "
                             f"{train.get('epochs')} epochs, seed {train.get('seed')}, {train.get('precision')}"),
            ("pretraining", f"{run.steps()} steps" + (f" in {seconds / 60:.1f} min" if seconds is not None else ""))]


def evaluation_table(run: RunView) -> str:
    rows = [(protocol, path, value) for protocol, payload in run.evaluations.items()
            for path, value in flat_metrics(payload).items()]
    for pool, value in (run.analysis.get("davies_bouldin") or {}).items():
        rows.append(("analysis", f"{pool}/davies_bouldin", value))
    if not rows:
        return '<p class="note">No evaluation yet: <code>mimreg eval linear --checkpoint RUN</code>.</p>'
    body = "".join(f'<tr><td class="text">{esc(p)}</td><td class="text">{esc(k)}</td><td>{number(v, k)}</td></tr>'
                   for p, k, v in rows)
    return ('<div class="table-wrap"><table class="evals"><thead><tr><th class="text">protocol</th>'
            f'<th class="text">result</th><th>value</th></tr></thead><tbody>{body}</tbody></table></div>')


def run_section(i: int, run: RunView) -> str:
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in key_config(run))
    description = run.config.get("description") or ""
    pictures = run.analysis.get("pictures") or {}
    seconds = run.analysis.get("seconds") or {}
    figures = [figure(Path(pictures[key]), f"{label} ({seconds[key]:.1f} s to draw)" if key in seconds else label,
                      wide=key in WIDE)
               for key, label in PICTURE_ORDER if key in pictures and Path(pictures[key]).is_file()]
    if not figures:
        figures = [f'<p class="note">No pictures: <code>mimreg analyze --checkpoint {esc(run.path)}</code>.</p>']
    notes = "".join(f'<p class="note">{esc(w)}</p>' for w in run.warnings)
    return (f'<section class="run" id="run-{i}"><h2>{esc(run.name)}</h2>'
            f'<p class="description">{esc(description)}</p>{notes}<dl class="facts">{facts}</dl>'
            f"<h3>Evaluations</h3>{evaluation_table(run)}"
            f'<h3>Pictures</h3><div class="grid">{"".join(figures)}</div></section>')


def render_page(title: str, runs: list[RunView], shared: dict[str, Path], seeds: str = "") -> str:
    """The page: `seeds` (the seeds-and-intervals section's HTML, when given) first, the comparison, each run."""
    study = []
    for method in ("pacmap", "tsne", "umap"):
        if method in shared:
            study.append(figure(shared[method], f"{TITLES[method]} of the cls test features, side by side "
                                                "(one random 10-class sample, the same images for every run)",
                                wide=True))
    if "curves" in shared:
        study.append(figure(shared["curves"], "Curves every run logs, overlaid", wide=True))
    toc = "".join(f'<li><a href="#run-{i}">{esc(r.name)}</a></li>' for i, r in enumerate(runs))
    sections = "".join(run_section(i, r) for i, r in enumerate(runs))
    made = time.strftime("%Y-%m-%d %H:%M")
    seeds_link = '<li><a href="#seeds">Seeds and intervals</a></li>' if seeds else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE_FILE.read_text()}</style></head><body><main>"
            f'<header><h1>{esc(title)}</h1><p class="note">Made by mimreg on {made} from '
            f"{len(runs)} run folder{'s' if len(runs) > 1 else ''}.</p>"
            f'<nav><ul class="toc">{seeds_link}<li><a href="#compare">Comparison</a></li>{toc}</ul></nav></header>'
            f'{seeds}<section id="compare"><h2>Comparison</h2>{comparison_table(runs)}'
            f'<div class="grid">{"".join(study)}</div></section>{sections}</main></body></html>\n')
