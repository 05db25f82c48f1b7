"""`model.init`: start an encoder from pretrained weights (a timm model in the local cache, a timm or
mimreg checkpoint, a safetensors file, or a folder `mimreg export` wrote). Only the encoder is
loaded; the decoder, projectors and heads of the method stay freshly initialised."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from mimreg import distributed as dist
from mimreg.console import say
from mimreg.engine.checkpoint import latest_checkpoint
from mimreg.errors import ConfigError
from mimreg.models import VIT_ARCHS, ResNetEncoder, ViTEncoder

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# keys of a source that belong to no encoder: MAE's decoder and mask token, classification heads
FRESH_PREFIXES = ("decoder_", "decoder.", "mask_token", "head.", "fc_norm.", "fc.", "head_drop.")


def apply_init(encoder: ViTEncoder | ResNetEncoder, source: str, download: bool = False) -> dict:
    """Load the weights `source` names into `encoder` (in place); returns what was loaded and left out.

    A ViT's pos_embed is copied (resampled bicubically, cls slot kept, when the patch grid differs)
    and stays frozen as loaded: MAE keeps its positions fixed during pretraining, so a continued
    pretraining keeps the loaded ones fixed too, and MAE's fine-tuning trains them afterwards."""
    state, origin = read_state(source, download)
    return load_state(encoder, state, origin, source)


def vit_from_init(source: str, img_size: int | None = None, download: bool = False) -> ViTEncoder:
    """A ViTEncoder of the architecture `source`'s weights have (read from their shapes), at
    `img_size` (default: the weights' own grid x patch), holding them (`mimreg eval finetune --init`)."""
    state, origin = read_state(source, download)
    dim = state["cls_token"].shape[-1] if "cls_token" in state else None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    arch = next((name for name, (d, n, _) in VIT_ARCHS.items() if (d, n) == (dim, depth)), None)
    if arch is None or "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise ConfigError(f"--init {source}: not a ViT of a mimreg architecture (width {dim}, {depth} blocks); "
                          f"mimreg's ViTs are {', '.join(f'{k} {v[0]}x{v[1]}' for k, v in VIT_ARCHS.items())}")
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    encoder = ViTEncoder(arch, img_size or grid * patch, patch)
    load_state(encoder, state, origin, source)
    return encoder


def load_state(encoder: ViTEncoder | ResNetEncoder, state: dict, origin: str, source: str) -> dict:
    """Copy the encoder's tensors of `state` into `encoder`; say what was loaded and left out."""
    state, ignored = encoder_keys(state)
    target = encoder.vit if isinstance(encoder, ViTEncoder) else encoder.resnet
    resampled = fit_vit_grid(encoder, state) if isinstance(encoder, ViTEncoder) else []
    check_same_keys(target, state, source)
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            tensor.copy_(state[name].to(tensor.dtype))
    report = {"source": origin, "loaded": len(state), "ignored": sorted(ignored), "resampled": resampled}
    left = ", ".join(f"{p}* ({sum(k.startswith(p) for k in ignored)})" for p in FRESH_PREFIXES
                     if any(k.startswith(p) for k in ignored))
    if dist.is_main_process():  # every process loads; one says so
        say(f"model.init: loaded {len(state)} encoder tensors from {origin}"
            + (f" ({'; '.join(resampled)})" if resampled else "")
            + f"; ignored from the file: {left or 'nothing'}; the method's other parts (decoder, projector, "
              "heads) start fresh")
    return report


def read_state(source: str, download: bool) -> tuple[dict, str]:
    """The flat tensor dict `source` holds, and where it came from (a path or a cached file)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = weights_in_folder(path)
    if path.is_file():
        return unwrap(read_file(path)), str(path)
    import timm

    if not timm.is_model(source):
        raise ConfigError(f"model.init {source!r} is neither a file, a folder nor a timm model name; pass a "
                          ".pth/.safetensors file, a folder `mimreg export` wrote, or a name from timm.list_models()")
    return timm_weights(source, download)


def weights_in_folder(folder: Path) -> Path:
    """The one weights file of an exported folder (`mimreg export`'s .pth beside its .json, or a hub
    folder's model.safetensors); a run folder gives its latest checkpoint."""
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if (folder / "checkpoints").is_dir():
        latest = latest_checkpoint(folder / "checkpoints")
        found = [latest] if latest is not None else found
    preferred = [p for p in found if p.name == "model.safetensors"] or found
    if len(preferred) != 1:
        raise ConfigError(f"model.init folder {folder} holds {len(found)} weight files "
                          f"({[p.name for p in found][:4]}); name the file to start from")
    return preferred[0]


def read_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own message is pages long
        raise ConfigError(f"model.init: cannot read {path} ({type(err).__name__}); pass a torch or "
                          "safetensors file of tensors") from None
    if not isinstance(state, dict):
        raise ConfigError(f"model.init: {path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def unwrap(state: dict) -> dict:
    """The tensors of a checkpoint: a mimreg checkpoint's encoder, MAE's 'model', a 'state_dict'."""
    if isinstance(state.get("config"), dict) and isinstance(state.get("model"), dict):
        return mimreg_encoder(state)
    for key in ("model", "state_dict", "module"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def mimreg_encoder(state: dict) -> dict:
    """The evaluated encoder's timm weights from a mimreg pretraining checkpoint."""
    from mimreg.methods import METHODS

    method = state["config"].get("method", {}).get("name", "mae")
    encoder = getattr(METHODS.get(method), "eval_encoder", "encoder")
    for prefix in (f"method.{encoder}.vit.", f"method.{encoder}.resnet."):
        found = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        if found:
            return found
    raise ConfigError("model.init: the mimreg checkpoint holds no encoder weights (method."
                      f"{encoder}.vit/resnet); pass a pretraining checkpoint")


def timm_weights(name: str, download: bool) -> tuple[dict, str]:
    """A timm model's pretrained weights from the local Hugging Face cache; downloaded only with
    `download` (model.init_download: true)."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(repo, filename)
            if isinstance(cached, str):
                return unwrap(read_file(Path(cached))), f"{name} ({cached})"
    if not download:
        how = f"`huggingface-cli download {repo}`" if repo else f"timm.create_model('{name}', pretrained=True)"
        raise ConfigError(f"model.init: timm model {name!r} is not in the local Hugging Face cache and mimreg never "
                          f"downloads unasked; set model.init_download: true or run {how} once")
    model = timm.create_model(name, pretrained=True)
    return model.state_dict(), f"{name} (downloaded)"


def encoder_keys(state: dict) -> tuple[dict, list[str]]:
    """Split `state` into the encoder's tensors and the keys of parts mimreg starts fresh."""
    ignored = [k for k in state if k.startswith(FRESH_PREFIXES)]
    return {k: v for k, v in state.items() if k not in ignored}, ignored


def fit_vit_grid(encoder: ViTEncoder, state: dict) -> list[str]:
    """Resample (in `state`) a pos_embed of another patch grid and a patch embedding of another patch
    size to `encoder`'s, with timm's resamplers; returns what was resampled."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    done = []
    pos, proj = state.get("pos_embed"), state.get("patch_embed.proj.weight")
    if pos is not None and pos.shape[1] != encoder.num_patches + 1 and pos.shape[-1] == encoder.embed_dim:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ConfigError(f"model.init: pos_embed of {pos.shape[1]} tokens is not a cls token plus a square "
                              "grid; mimreg's ViT has one cls token and no register tokens")
        state["pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=[encoder.grid_size] * 2,
                                                    old_size=[side, side], num_prefix_tokens=1)
        done.append(f"pos_embed resampled from a {side}x{side} to a {encoder.grid_size}x{encoder.grid_size} grid")
    if proj is not None and proj.shape[-1] != encoder.patch_size and proj.shape[0] == encoder.embed_dim:
        state["patch_embed.proj.weight"] = resample_patch_embed(proj.float(), [encoder.patch_size] * 2)
        done.append(f"patch embedding resampled from {proj.shape[-1]} to {encoder.patch_size} px patches")
    return done


def check_same_keys(target: nn.Module, state: dict, source: str) -> None:
    """A one-line ConfigError naming the first missing, unexpected and mismatched tensors."""
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ConfigError(f"model.init {source} does not fit model.arch (other shapes {mismatched[:3]}, missing "
                          f"{missing[:3]} of {len(missing)}, unexpected {unexpected[:3]} of {len(unexpected)}); "
                          "set model.arch (and patch_size) to the architecture the weights were trained with")
