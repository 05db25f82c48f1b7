"""Checkpoints: atomic writes, last-k kept, and every RNG state needed for an exact resume."""

from __future__ import annotations

import random
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mimreg.errors import MimregError
from mimreg.io import atomic_write, disk_full_message
from mimreg.plugins import CONSENT, refuse_unconsented

CKPT_PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _tuples_to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(_lists_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples_to_lists(x):
    return [_tuples_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _lists_to_tuples(x):
    return tuple(_lists_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(folder: Path, step: int, payload: dict, keep_last: int) -> Path:
    """Write ckpt_<step>.pt atomically (temporary file, then rename) and prune to `keep_last`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_{step:08d}.pt"
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except Exception as err:
        message = disk_full_message(path, err)
        if message is None:
            raise
        raise MimregError(message) from err
    for old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CKPT_PATTERN.match(p.name))


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file `path` names: itself, or the latest checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise MimregError(f"no checkpoint (ckpt_*.pt) in {path} or {path / 'checkpoints'}")
        path = found
    if not path.is_file():
        raise MimregError(f"checkpoint {path} does not exist; pass a ckpt_*.pt file or a run folder")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Load with `weights_only=True`: a checkpoint holds tensors and plain Python values only.

    mmap: map the tensors from the file instead of reading them (cheap when only the config is read).
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch's own messages point at its documentation, not at the file
        raise MimregError(f"cannot read checkpoint {path}: {_load_failure(err, path)}") from None
    if not isinstance(state, dict):
        raise MimregError(f"{path} is not a mimreg checkpoint (it holds a {type(state).__name__}); pass a "
                          "ckpt_*.pt written by mimreg")
    return state


def _load_failure(err: Exception, path: Path) -> str:
    text = str(err)
    if "Weights only load failed" in text or "Unsupported global" in text:
        return ("it holds Python objects other than tensors and plain values (a pickled model, or code), "
                "which mimreg never writes and refuses to run; use a checkpoint written by mimreg pretrain")
    if not zipfile.is_zipfile(path) or "central directory" in text or isinstance(err, EOFError):
        return ("the file is truncated or corrupt (not a complete torch archive); delete it, and "
                "--resume continues from the previous checkpoint")
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def non_finite_entries(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors of a (nested) state dict holding NaN or inf."""
    bad = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += non_finite_entries(value, f"{name}.")
        elif torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def load_matching_state(module: torch.nn.Module, state: dict, path: Path,
                        load: Callable[[dict], object] | None = None) -> None:
    """`module.load_state_dict(state)` (or `load(state)`, e.g. a sharded module's loader), or a
    MimregError naming what does not match (keys missing or unexpected, tensors of other shapes: a
    checkpoint of another model)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        raise MimregError(f"checkpoint {path} holds another model than the config builds (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, other shapes {mismatched[:3]}); use the config it was "
                          "trained with")
    if load is None:
        module.load_state_dict(state, strict=False)
    else:
        load(state)


def config_of(state: dict, path: Path, consent: str = CONSENT) -> dict:
    """The run config stored in a checkpoint, or a MimregError saying it has none; a ConfigError
    when it names modules to import that the user has not imported (`consent`: how to)."""
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise MimregError(f"checkpoint {path} holds no run config: it was not written by mimreg pretrain "
                          "(or by a release before configs were stored); re-export it from its run")
    refuse_unconsented(state["config"].get("imports") or [], f"checkpoint {path}", consent)
    return state["config"]


def stored_imports(checkpoint: str | Path) -> list[str]:
    """The modules a checkpoint's config asks to import (for --trust-imports); the tensors stay on disk."""
    state = load_checkpoint(checkpoint, mmap=True)
    imports = state.get("config", {}).get("imports") if isinstance(state.get("config"), dict) else None
    return [str(n) for n in imports] if isinstance(imports, list) else []
