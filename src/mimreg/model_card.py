"""The model card (README.md) of a `mimreg export --format hf` folder: recipe, data, pretraining
steps and time, every evaluation with its protocol and settings, the papers, mimreg's version and
the config. Everything comes from the run folder; nothing is made up for what it does not hold."""

from __future__ import annotations

import json
from pathlib import Path

from mimreg import __version__
from mimreg.config import Config, config_text
from mimreg.engine.metrics import read_metrics
from mimreg.eval.results import load_results
from mimreg.methods import METHODS
from mimreg.regularizers import REGULARIZERS

# the settings of a result worth stating beside its numbers (the rest is in the result file)
SETTINGS = ("protocol", "epochs", "weight_decay", "lr", "base_lr", "batch_size", "folds", "num_classes")


def model_card(cfg: Config, meta: dict, run_dir: Path, config: dict, head_eval: dict | None, usage: str) -> str:
    sections = [front_matter(cfg), f"# {Path(run_dir).name}: {cfg.recipe} pretrained with mimreg\n",
                recipe_section(cfg), pretraining_section(cfg, meta, run_dir), head_section(config, head_eval),
                evaluations_section(run_dir), f"## Use\n\n```python\nimport timm\n{usage}\n```\n\nFrom the hub, once uploaded: "
                f"`timm.create_model('hf-hub:USER/REPO', pretrained=True)`.\n",
                papers_section(cfg), f"## Config (mimreg {__version__})\n\n```yaml\n{config_text(cfg)}```\n"]
    return "\n".join(sections)


def front_matter(cfg: Config) -> str:
    return ("---\nlibrary_name: timm\ntags:\n- image-feature-extraction\n- mimreg\n- timm\n"
            f"datasets:\n- {cfg.data.name}\n---\n")


def recipe_section(cfg: Config) -> str:
    regs = ", ".join(f"{r.name} (weight {r.weight if r.weight is not None else 'default'})"
                     for r in cfg.regularizers) or "none"
    return (f"## Recipe\n\n- recipe: `{cfg.recipe}` ({cfg.description or 'no description'})\n"
            f"- method: `{cfg.method.name}`; regularizers: {regs}\n"
            f"- encoder: `{cfg.model.arch}`, images {cfg.img_size}x{cfg.img_size}\n")


def pretraining_section(cfg: Config, meta: dict, run_dir: Path) -> str:
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    start = next((r for r in records if r.get("kind") == "start"), {})
    seconds = max((r["time"] for r in records if r.get("kind") in ("train", "epoch") and "time" in r), default=None)
    took = f"{seconds / 60:.1f} min ({seconds:.1f} s) since the last (re)start" if seconds is not None else "not recorded"
    return (f"## Pretraining\n\n- data: `{cfg.data.name}` ({start.get('images', '?')} training images"
            f"{', root ' + str(cfg.data.root) if cfg.data.root else ''})\n"
            f"- steps: {meta.get('step')} (epoch {meta.get('epoch')}), batch {cfg.optim.batch_size} per process "
            f"x {start.get('world', '?')} on {start.get('device', '?')}\n- time: {took}\n")


def head_section(config: dict, head_eval: dict | None) -> str:
    if head_eval is None:
        return ("## Head\n\nNone: the run has no linear evaluation of this checkpoint, so the model gives "
                f"the {config['num_features']}-d pooled features (`num_classes` 0).\n")
    return (f"## Head\n\nThe linear probe of `{Path(head_eval['file']).name}` ({head_eval['result']['top1']:.2f}% "
            f"top-1 on `{head_eval['data']}` test, pool `{head_eval['pool']}` = timm global_pool "
            f"`{config['global_pool']}`), its feature standardisation folded into the weights: `model(images)` "
            f"gives the probe's {config['num_classes']} logits on images normalised as `pretrained_cfg` says.\n")


def evaluations_section(run_dir: Path) -> str:
    rows = [evaluation_line(r) for r in load_results(run_dir)] if Path(run_dir).is_dir() else []
    return "## Evaluations\n\n" + ("\n".join(rows) if rows else "None yet (`mimreg eval` writes them).") + "\n"


def evaluation_line(record: dict) -> str:
    name = record.get("protocol", "?") + (f"-{record['variant']}" if record.get("variant") else "")
    numbers = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in record.get("headline", {}).items())
    result = record.get("result", {})
    settings = {k: result[k] for k in SETTINGS if isinstance(result, dict) and result.get(k) is not None}
    options = record.get("options") or {}
    return (f"- **{name}** on `{record.get('data')}`, pool `{record.get('pool')}`, step {record.get('step')}, "
            f"{record.get('train_images')} train / {record.get('test_images')} test images: {numbers}"
            + (f"; settings {json.dumps(settings)}" if settings else "")
            + (f"; options {json.dumps(options)}" if options else ""))


def papers_section(cfg: Config) -> str:
    papers = [f"- {cfg.method.name}: {METHODS[cfg.method.name].paper}"]
    papers += [f"- {r.name}: {REGULARIZERS[r.name].paper}" for r in cfg.regularizers if r.name in REGULARIZERS]
    return "## Papers to cite\n\n" + "\n".join(papers) + "\n"
