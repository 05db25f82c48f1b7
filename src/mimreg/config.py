"""Typed run configuration: dataclasses loaded from YAML recipes and validated once at load.

A recipe file may name a `preset` (recipes/presets/<name>.yaml) that supplies data, model,
optimisation and training defaults; the recipe's own keys override it. Methods and regularizers
take their options flat in the same mapping as `name`, and each option is checked against the
method's or regularizer's own Options dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mimreg.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    img_size: int | None = None  # None: the dataset's native size
    subset: int | None = None  # pretrain on this many randomly chosen images
    skip_bad_images: bool = False
    num_workers: int = 0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    augmentation: str = "mae"  # mae: crop + flip; simclr: crop + flip + colour jitter + grayscale (+ blur)
    num_views: int = 1  # augmented views per image (2 for joint-embedding methods)
    blur: bool = False  # Gaussian blur in the simclr augmentation (off at CIFAR size)
    focal_views: int = 10  # msn: small unmasked views besides the target and anchor views
    focal_size: int | None = None  # msn: their size (None: 96/224 of the image size, to the patch)


@dataclass
class ModelConfig:
    arch: str = "vit_micro"
    patch_size: int = 4
    drop_path: float = 0.0


@dataclass
class MethodConfig:
    name: str = "mae"
    options: Any = None  # the method's Options dataclass, filled at load


@dataclass
class RegularizerConfig:
    name: str
    weight: float | None = None  # None: the regularizer's default weight
    start_epoch: int = 0
    duration: int | None = None  # None: active until the end
    gather: bool = True  # batch-wide losses over the global batch of all processes
    gate_rec_loss: float | None = None  # off until an EMA of the `rec` loss falls below this (one way)
    options: Any = None


@dataclass
class OptimConfig:
    batch_size: int = 128  # per process and micro-step; effective = batch_size * accum_steps * world
    accum_steps: int = 1
    blr: float = 1.5e-4  # lr = blr * effective_batch / 256 unless `lr` is set
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine schedule to this value (MSN: 0.04 -> 0.4)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 1.0
    schedule_stretch: float = 1.0  # cosine lr/wd schedules span stretch x the run (MSN official: 1.25)
    clip_grad: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    precision: str = "fp32"  # fp32, bf16, fp16 (fp16 only on cuda)
    log_every: int = 10
    monitor_every: int = 10  # steps between no-grad evaluations of monitored/inactive regularizers
    ckpt_every_steps: int = 0  # 0: only at the end of each epoch
    keep_last: int = 2
    online_probe: bool = True
    tensorboard: bool = False
    compile: bool = False
    sync_batchnorm: bool = True  # under DDP on CUDA: BatchNorm over the global batch, as the official codes
    progress: bool = True
    halt_after_steps: int | None = None  # stop early as if interrupted (to exercise --resume)
    knn_every: int | None = None  # epochs between online k-NN measurements; None: auto (when labelled); 0: off
    knn_bank: int = 320  # random training images in the online k-NN memory bank
    knn_queries: int = 160  # random test images it classifies


@dataclass
class Config:
    recipe: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    regularizers: list[RegularizerConfig] = field(default_factory=list)
    monitor: list[RegularizerConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def img_size(self) -> int:
        from mimreg.data import default_img_size

        return self.data.img_size or default_img_size(self.data.name)


# ---------------------------------------------------------------- loading
def load_config(source: str | Path, overrides: list[str] = ()) -> Config:
    """A recipe name (`u-mae`, `cifar10/u-mae`) or a YAML path, plus `key=value` overrides."""
    raw = read_recipe(source)
    defaults = raw.pop("regularizer_defaults", None)
    method_defaults = raw.pop("method_defaults", None)
    for item in overrides:
        apply_override(raw, item)
    apply_method_defaults(raw, method_defaults)
    return config_from_dict(apply_regularizer_defaults(raw, defaults))


def read_recipe(source: str | Path) -> dict:
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = _read_yaml(path)
    else:
        raw = _recipe_by_name(str(source))
    preset = raw.pop("preset", None)
    if preset is not None:
        raw = merge(_read_yaml(_preset_path(preset)), raw)
    return raw


def apply_method_defaults(raw: dict, defaults: dict | None) -> None:
    """A preset's `method_defaults: {mae: {decoder_dim: 96}}` fills the options of that method only,
    so one preset serves every method."""
    method = raw.setdefault("method", {})
    if isinstance(method, dict):
        for key, value in ((defaults or {}).get(method.get("name", "mae")) or {}).items():
            method.setdefault(key, value)


def apply_regularizer_defaults(raw: dict, defaults: dict | None) -> dict:
    """A preset's `regularizer_defaults: {magma: {start_epoch: 10}}` fills keys a recipe (or --set)
    leaves out: schedules depend on the training length, which the preset sets."""
    defaults = defaults or {}
    for entry in list(raw.get("regularizers") or []) + list(raw.get("monitor") or []):
        if isinstance(entry, dict):
            for key, value in (defaults.get(entry.get("name")) or {}).items():
                entry.setdefault(key, value)
    return raw


def _recipe_by_name(name: str) -> dict:
    preset, _, method_recipe = name.rpartition("/")
    path = RECIPES_DIR / "methods" / f"{method_recipe}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}; choose one of {recipe_names()} "
                          f"(optionally prefixed by a preset: {preset_names()}), or pass a .yaml path")
    raw = _read_yaml(path)
    raw.setdefault("preset", "digits")
    if preset:
        raw["preset"] = preset
        _preset_path(preset)
    raw["recipe"] = name if preset else f"{raw['preset']}/{method_recipe}"
    return raw


def _preset_path(name: str) -> Path:
    path = RECIPES_DIR / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of {preset_names()}")
    return path


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (RECIPES_DIR / "methods").glob("*.yaml"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in (RECIPES_DIR / "presets").glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(raw).__name__}")
    return raw


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; lists (regularizers) are replaced, not concatenated."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_override(raw: dict, item: str) -> None:
    """`optim.blr=1e-3`, `regularizers.magma.weight=2`, `regularizers=[]` (YAML values)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    value = yaml.safe_load(text)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_entry(node, part, ".".join(parts[: i + 1]))
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(value, dict):
            raise ConfigError(f"--set {key}: a list entry takes a mapping, e.g. {key}='{{weight: 2}}'")
        _list_entry(node, last, key).update(value)
    else:
        node[last] = value


def _list_entry(entries: list, selector: str, key: str) -> dict:
    if selector.isdigit() and int(selector) < len(entries):
        return entries[int(selector)]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == selector:
            return entry
    names = [e.get("name") for e in entries if isinstance(e, dict)]
    raise ConfigError(f"--set {key}: no entry {selector!r} in this list; it has {names} "
                      f"(to add one, set the whole list, e.g. regularizers='[{{name: magma}}]')")


# ---------------------------------------------------------------- validation
def config_from_dict(raw: dict) -> Config:
    from mimreg.methods import METHODS
    from mimreg.regularizers import REGULARIZERS

    raw = dict(raw)
    method_raw = raw.pop("method", {}) or {}
    regs_raw = raw.pop("regularizers", []) or []
    monitor_raw = raw.pop("monitor", []) or []
    cfg = build_dataclass(Config, raw, "config")
    cfg.method = _named_entry(MethodConfig, method_raw, METHODS, "method")
    cfg.regularizers = [_named_entry(RegularizerConfig, r, REGULARIZERS, f"regularizers[{i}]")
                        for i, r in enumerate(_as_list(regs_raw, "regularizers"))]
    cfg.monitor = [_named_entry(RegularizerConfig, {"name": r} if isinstance(r, str) else r, REGULARIZERS,
                                f"monitor[{i}]") for i, r in enumerate(_as_list(monitor_raw, "monitor"))]
    validate(cfg)
    return cfg


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of entries, got {type(value).__name__}")
    return value


def _named_entry(cls: type, raw: Any, registry: dict, where: str):
    """Split a flat `{name: ..., <common keys>, <option keys>}` into cls(..., options=Options(...))."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{where} needs a `name`; choose one of {sorted(registry)}")
    name = raw["name"]
    if name not in registry:
        raise ConfigError(f"{where}: unknown name {name!r}; choose one of {sorted(registry)}"
                          + _suggest(str(name), registry))
    common = {f.name for f in dataclasses.fields(cls)} - {"options"}
    options_cls = registry[name].Options
    option_keys = {f.name for f in dataclasses.fields(options_cls)}
    unknown = set(raw) - common - option_keys
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{where} ({name}): unknown key {key!r}; valid keys are "
                          f"{sorted((common | option_keys) - {'name'})}" + _suggest(key, common | option_keys))
    entry = build_dataclass(cls, {k: v for k, v in raw.items() if k in common}, where)
    entry.options = build_dataclass(options_cls, {k: v for k, v in raw.items() if k in option_keys},
                                    f"{where} ({name})")
    return entry


def build_dataclass(cls: type, raw: Any, where: str):
    """Instantiate dataclass `cls` from a mapping, checking every key and value type."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{where}: unknown key {key!r}; valid keys are {sorted(fields)}"
                          + _suggest(key, fields))
    values = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where}: {err}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        item = args[0] if args else Any
        return origin(_coerce(item, v, where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-3 without a dot as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate(cfg: Config) -> None:
    """Checks that need more than one key: composition and ranges."""
    from mimreg.data import DATASET_NAMES
    from mimreg.models import ARCHS

    choices = {"data.name": (cfg.data.name, DATASET_NAMES), "model.arch": (cfg.model.arch, sorted(ARCHS)),
               "train.precision": (cfg.train.precision, ["fp32", "bf16", "fp16"]),
               "data.augmentation": (cfg.data.augmentation, ["mae", "simclr", "msn"])}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: unknown value {value!r}; choose one of {list(allowed)}")
    positive = {"optim.batch_size": cfg.optim.batch_size, "data.num_views": cfg.data.num_views, "optim.accum_steps": cfg.optim.accum_steps,
                "train.epochs": cfg.train.epochs, "train.log_every": cfg.train.log_every,
                "train.monitor_every": cfg.train.monitor_every, "train.keep_last": cfg.train.keep_last}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    knn = {"train.knn_bank": cfg.train.knn_bank, "train.knn_queries": cfg.train.knn_queries}
    if cfg.train.knn_every is not None and cfg.train.knn_every < 0 or min(knn.values()) < 1:
        raise ConfigError(f"train.knn_every must be >= 0 (0: off) and train.knn_bank, train.knn_queries >= 1, got "
                          f"{cfg.train.knn_every}, {cfg.train.knn_bank}, {cfg.train.knn_queries}")
    if cfg.optim.schedule_stretch < 1:
        raise ConfigError(f"optim.schedule_stretch must be >= 1, got {cfg.optim.schedule_stretch}")
    if cfg.data.subset is not None and cfg.data.subset < 1:
        raise ConfigError(f"data.subset must be a positive number of images, got {cfg.data.subset}")
    for section, entries in (("regularizers", cfg.regularizers), ("monitor", cfg.monitor)):
        names = [r.name for r in entries]
        for reg in entries:
            if names.count(reg.name) > 1:
                raise ConfigError(f"{section}: {reg.name!r} is listed twice; list each once")
            if reg.duration is not None and reg.duration < 0 or reg.start_epoch < 0:
                raise ConfigError(f"{section}: {reg.name!r}: start_epoch and duration must be >= 0")
    from mimreg.regularizers import REGULARIZERS

    batch_wide = [r.name for r in cfg.regularizers + cfg.monitor if REGULARIZERS[r.name].batch_wide]
    if batch_wide and cfg.optim.batch_size < 2:
        raise ConfigError(f"regularizers {batch_wide} are batch-wide and need optim.batch_size >= 2, "
                          f"got {cfg.optim.batch_size}")


def config_to_dict(cfg: Config) -> dict:
    """The flat YAML form (method and regularizer options inline), loadable by config_from_dict."""

    def flat(entry) -> dict:
        out = {k: v for k, v in dataclasses.asdict(entry).items() if k != "options"}
        out.update(dataclasses.asdict(entry.options))
        return out

    raw = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    raw["method"] = _plain(flat(cfg.method))
    raw["regularizers"] = [_plain(flat(r)) for r in cfg.regularizers]
    raw["monitor"] = [_plain(flat(r)) for r in cfg.monitor]
    return raw


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
