"""`mimreg export --format hf`: a folder that timm and the Hugging Face hub load as it is.

OUT/model.safetensors holds the encoder under timm's names and, when the run has a linear
evaluation of the exported checkpoint, the probe's head as timm's classifier (the probe's
standardisation or BatchNorm folded in, so `model(images)` gives the probe's logits). OUT/config.json
is timm's hub config (architecture, model_args, pretrained_cfg with image size and mean/std,
num_classes, global_pool); OUT/README.md is the model card (mimreg/model_card.py).
A CIFAR-stem ResNet is refused: timm's config cannot express that stem (`--format timm` says how
to swap it in).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mimreg.data import dataset_stats, eval_crop_fraction
from mimreg.engine.checkpoint import resolve_checkpoint
from mimreg.errors import MimregError
from mimreg.eval.evaluate import run_dir_of
from mimreg.eval.frozen import load_encoder
from mimreg.eval.results import head_path, load_head, load_results
from mimreg.io import atomic_write, write_json_atomic
from mimreg.model_card import model_card
from mimreg.models import ResNetEncoder

# mimreg's pools -> timm's global_pool: `cls` is the normed cls token, `mean` the mean of the normed
# patch tokens (timm's 'avg' with fc_norm off, so the final norm comes before the mean as in mimreg).
TIMM_POOL = {"cls": "token", "mean": "avg"}


def export_hf(checkpoint, out: str | Path) -> dict:
    """Write OUT/model.safetensors, OUT/config.json and OUT/README.md (module docstring); returns
    the config, the head's evaluation (or None) and how to load the folder."""
    source = resolve_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MimregError(f"--out {out} is a file; --format hf writes a folder (model.safetensors, config.json, "
                          "README.md): pass a folder path")
    encoder, cfg, meta = load_encoder(source)
    if isinstance(encoder, ResNetEncoder) and encoder.stem == "cifar":
        raise MimregError(f"{encoder.arch} has the CIFAR stem (3x3 conv, no max-pool), which timm's config.json "
                          "cannot express; export it with --format timm, whose usage line swaps the stem in")
    run_dir = run_dir_of(checkpoint)
    evaluation = probe_to_fold(run_dir, meta["step"], encoder)
    head = load_head(evaluation["file"]) if evaluation else None
    config = timm_config(encoder, cfg, evaluation, head)
    weights = dict((encoder.resnet if isinstance(encoder, ResNetEncoder) else encoder.vit).state_dict())
    if head is not None:
        classifier = "fc" if isinstance(encoder, ResNetEncoder) else "head"
        weights.update({f"{classifier}.weight": head["weight"], f"{classifier}.bias": head["bias"]})
    write_safetensors(out / "model.safetensors", weights)
    write_json_atomic(out / "config.json", config)
    usage = load_usage(out, config)
    card = model_card(cfg, meta, run_dir, config, evaluation, load_usage(Path("THIS_FOLDER"), config))
    atomic_write(out / "README.md", lambda handle: handle.write(card), binary=False)
    return {"config": config, "head": evaluation["file"] if evaluation else None, "usage": usage}


def probe_to_fold(run_dir: Path, step: int | None, encoder) -> dict | None:
    """The linear evaluation of this checkpoint (same step) whose head was kept, on a pool timm can
    pool (cls or mean); of several, the best top-1 (then the first by file name). None: none."""
    if not Path(run_dir).is_dir():
        return None
    pools = ("cls",) if isinstance(encoder, ResNetEncoder) else tuple(TIMM_POOL)
    found = [r for r in load_results(run_dir) if r.get("protocol") == "linear" and r.get("pool") in pools
             and r.get("step") == step and "file" in r and head_path(r["file"]).is_file()]
    return max(found, key=lambda r: (r["result"]["top1"], [-ord(c) for c in r["file"]]), default=None)


def timm_config(encoder, cfg, evaluation: dict | None, head: dict | None) -> dict:
    """timm's hub config.json: what `timm.create_model('local-dir:OUT', pretrained=True)` reads."""
    data = evaluation["data"] if evaluation else cfg.data.name  # the head was fit on this data's features
    mean, std = dataset_stats(data)
    num_classes = int(head["weight"].shape[0]) if head is not None else 0
    pool = TIMM_POOL[evaluation["pool"]] if evaluation else "token"
    if isinstance(encoder, ResNetEncoder):
        architecture, pool = encoder.arch, "avg"
        model_args = {"num_classes": num_classes}
        classifier, first_conv = "fc", "conv1"
    else:
        architecture, classifier, first_conv = "vit_base_patch16_224", "head", "patch_embed.proj"
        model_args = {"img_size": encoder.img_size, "patch_size": encoder.patch_size, "embed_dim": encoder.embed_dim,
                      "depth": encoder.depth, "num_heads": encoder.num_heads, "mlp_ratio": 4.0, "qkv_bias": True,
                      "global_pool": pool, "fc_norm": False, "num_classes": num_classes}
    return {"architecture": architecture, "num_classes": num_classes, "num_features": int(encoder.embed_dim),
            "global_pool": pool, "model_args": model_args,
            "pretrained_cfg": {"input_size": [3, cfg.img_size, cfg.img_size], "fixed_input_size": True,
                               "interpolation": "bicubic", "crop_pct": eval_crop_fraction(data), "crop_mode": "center",
                               "mean": list(mean), "std": list(std), "num_classes": num_classes,
                               "first_conv": first_conv, "classifier": classifier}}


def write_safetensors(path: Path, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in weights.items()}, metadata={"format": "pt"})
    atomic_write(path, lambda handle: handle.write(data))


def load_usage(out: Path, config: dict) -> str:
    """How timm builds the model from the folder, offline: by its path (timm >= 1.0.16), or by the
    architecture with the folder's weights (any timm 1.0)."""
    args = ", ".join(f"{k}={v!r}" for k, v in config["model_args"].items() if k != "num_classes")
    return (f"timm.create_model('local-dir:{out}', pretrained=True)  # timm >= 1.0.16; with older timm:\n"
            f"timm.create_model('{config['architecture']}', pretrained=True, num_classes={config['num_classes']}, "
            f"{args + ', ' if args else ''}pretrained_cfg_overlay=dict(file='{out / 'model.safetensors'}'))")
