"""What the CLI commands do, as plain functions: evaluate, analyze, export (the evaluations live in
mimreg.eval.evaluate and mimreg.eval.finetune; imported here for the CLI and the demo)."""

from __future__ import annotations

from pathlib import Path

import torch

from mimreg.analysis.analyze import analyze  # noqa: F401  (mimreg analyze; lives with its pictures)
from mimreg.eval.evaluate import PROTOCOLS, embed_train_test, evaluate, robustness, run_dir_of, summary_row
from mimreg.eval.frozen import load_encoder
from mimreg.engine.checkpoint import resolve_checkpoint
from mimreg.errors import MimregError
from mimreg.io import atomic_write, write_json_atomic
from mimreg.models import ResNetEncoder

__all__ = ["PROTOCOLS", "analyze", "embed_train_test", "evaluate", "export_timm", "robustness", "run_dir_of",
           "summary_row", "timm_model_kwargs"]


def timm_model_kwargs(encoder) -> dict:
    """Arguments for `timm.create_model('vit_base_patch16_224', **kwargs)` giving our architecture."""
    return {"img_size": encoder.img_size, "patch_size": encoder.patch_size, "embed_dim": encoder.embed_dim,
            "depth": encoder.depth, "num_heads": encoder.num_heads, "num_classes": 0}


def export_timm(checkpoint, out: str | Path) -> dict:
    """Save the encoder as a timm VisionTransformer or ResNet state dict (OUT: safetensors when it
    ends in .safetensors, else torch's format) plus OUT with suffix .json (the create_model
    arguments); both written atomically, neither over the checkpoint it reads."""
    source = resolve_checkpoint(checkpoint)
    out = Path(out)
    sidecar = out.with_suffix(".json")
    if sidecar == out:
        raise MimregError(f"--out {out}: the export writes the weights to OUT and their timm arguments to "
                          f"OUT with suffix .json, which is {out} itself; pass --out NAME.pth")
    for target in (out, sidecar):
        if target.exists() and target.resolve() == source.resolve():
            raise MimregError(f"--out {out} would replace the checkpoint {source} it exports; choose another path")
    encoder, cfg, meta = load_encoder(source)
    info = timm_resnet_info(encoder) if isinstance(encoder, ResNetEncoder) else timm_vit_info(encoder)
    info.update(recipe=meta["recipe"], checkpoint=str(source))
    weights = (encoder.resnet if isinstance(encoder, ResNetEncoder) else encoder.vit).state_dict()
    if out.suffix == ".safetensors":  # no pickle: loads without trusting the file
        from safetensors.torch import save

        info["usage"] = info["usage"].replace("torch.load(PATH)", "safetensors.torch.load_file(PATH)")
        atomic_write(out, lambda handle: handle.write(save({k: v.contiguous() for k, v in weights.items()})))
    else:
        atomic_write(out, lambda handle: torch.save(weights, handle))
    write_json_atomic(sidecar, info)
    return info


def timm_vit_info(encoder) -> dict:
    kwargs = timm_model_kwargs(encoder)
    return {"timm_model": "vit_base_patch16_224", "kwargs": kwargs,
            "usage": f"timm.create_model('vit_base_patch16_224', pretrained=False, "
                     f"{', '.join(f'{k}={v}' for k, v in kwargs.items())}).load_state_dict(torch.load(PATH))"}


def timm_resnet_info(encoder: ResNetEncoder) -> dict:
    """timm builds only the ImageNet stem: a CIFAR-stem export says to swap it in before loading."""
    build = f"timm.create_model('{encoder.arch}', pretrained=False, num_classes=0)"
    if encoder.stem == "cifar":
        build = f"mimreg.models.use_cifar_stem({build})"
    return {"timm_model": encoder.arch, "kwargs": {"num_classes": 0}, "stem": encoder.stem,
            "usage": f"{build}.load_state_dict(torch.load(PATH))"
                     + (" (the CIFAR stem: conv1 a 3x3 stride-1 convolution, no max-pool)" if encoder.stem == "cifar"
                        else "")}
