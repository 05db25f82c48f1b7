"""Typed run configuration: dataclasses loaded from YAML recipes, layered and validated once at load
(values into typed fields: typed_fields.py; schedules that follow the run length: run_length.py).

A recipe file may name a `preset` (recipes/presets/<name>.yaml) that supplies data, model,
optimisation and training defaults; the recipe's own keys override it. Methods and regularizers
take their options flat in the same mapping as `name`, and each option is checked against the
method's or regularizer's own Options dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mimreg.bounds import bounded, one_of
from mimreg.errors import ConfigError
from mimreg.run_length import check_schedules, resolve_run_fractions, resolve_window
from mimreg.typed_fields import build_dataclass, suggest

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    img_size: int | None = bounded(None, ge=1)  # None: the dataset's native size (an imagefolder's is read from its files)
    subset: int | None = bounded(None, ge=1)  # pretrain on this many randomly chosen images
    skip_bad_images: bool = False
    num_workers: int = bounded(0, ge=0)
    crop_scale: tuple[float, float] = bounded((0.2, 1.0), gt=0, le=1, ordered=True)
    hflip: bool = True
    # mae: crop + flip; simclr: crop + flip + colour jitter + grayscale (+ blur); msn: its multi-crop views
    augmentation: str = one_of("mae", "mae", "simclr", "msn")
    num_views: int = bounded(1, ge=1)  # augmented views per image (2 for joint-embedding methods)
    blur: bool = False  # Gaussian blur in the simclr augmentation (off at CIFAR size)
    focal_views: int = bounded(10, ge=0)  # msn: small unmasked views besides the target and anchor views
    focal_size: int | None = bounded(None, ge=1)  # msn: their size (None: 96/224 of the image size, to the patch)
    pipeline: str = one_of("auto", "auto", "loader", "device")  # device: decode once, augment batches on the training device; loader: PIL workers
    device_memory_gb: float = bounded(4.0, gt=0)  # auto picks the device pipeline when the decoded images fit in this
    cache_dir: str | None = None  # decoded image files for the device pipeline (None: <root>/.mimreg-cache)
    decode_on_device: bool = False  # loader pipeline: workers read files, the training device decodes and augments
    # loader pipeline, image files: decode a JPEG at 1/2-1/8 scale when its crop still covers the
    # output (Pillow's draft mode; benchmarks/imagenet_decode.py); null: on wherever the loader
    # pipeline reads image files; false: the PIL path (the full image, torchvision's draws); true is
    # refused where no loader runs
    jpeg_draft: bool | None = None
    # data.name hf (a Hugging Face `datasets` dataset at data.root): the columns of the image and of
    # the label (null: unlabelled images) and the names of the train and test splits; refused for other data
    hf_image_column: str = "image"
    hf_label_column: str | None = "label"
    hf_train_split: str = "train"
    hf_test_split: str = "test"

    def hf_columns(self):
        """The data.hf_* settings, as load_dataset takes them."""
        from mimreg.data.hf import HFColumns

        return HFColumns(self.hf_image_column, self.hf_label_column, self.hf_train_split, self.hf_test_split)


VIT_PATCH_SIZE = 4  # a ViT's model.patch_size when no layer gives one


@dataclass
class ModelConfig:
    arch: str = "vit_micro"  # vit_* (every method) or resnet18/resnet50 (the joint-embedding methods)
    patch_size: int | None = bounded(None, ge=1)  # ViTs only (None: VIT_PATCH_SIZE); a ResNet has no patches
    stem: str = one_of("auto", "auto", "cifar", "imagenet")  # ResNets only; auto: cifar up to 64 px
    drop_path: float = bounded(0.0, ge=0, lt=1)
    # start the encoder from these weights (a fresh run only; a resume restores its checkpoint): a timm
    # model name in the local Hugging Face cache, a .pth/.safetensors file, or a `mimreg export` folder
    init: str | None = None
    init_download: bool = False  # let model.init download a timm model that is not in the cache


@dataclass
class MethodConfig:
    name: str = "mae"
    options: Any = None  # an instance of METHODS[name].Options, range-checked at load; the method checks the rest


@dataclass
class RegularizerConfig:
    # the window (start_epoch, duration) or the gate switches the weight on: one of them is in force
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = (("start_epoch", "duration"), ("gate_rec_loss",))

    name: str
    weight: float | None = bounded(None, ge=0)  # None: the regularizer's default weight
    start_epoch: int | None = bounded(0, ge=0, per_run=True)  # epochs, or a percentage of train.epochs
    duration: int | None = bounded(None, ge=1, per_run=True)  # None: active until the end
    gather: bool | None = None  # batch-wide losses over all processes' batch; None: the regularizer's (official) default, set at load
    gate_rec_loss: float | None = bounded(None, ge=0)  # off until an EMA of the `rec` loss falls below this (one way)
    options: Any = None  # an instance of REGULARIZERS[name].Options, checked at load by the regularizer


@dataclass
class OptimConfig:
    # one learning-rate rule is in force: blr (the default) or an absolute lr
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = (("blr",), ("lr",))

    name: str = one_of("adamw", "adamw", "lars")  # lars: timm's Lars (SGD momentum, layer-wise trust ratio)
    batch_size: int = bounded(128, ge=1)  # per process and micro-step; effective = batch_size * accum_steps * world
    accum_steps: int = bounded(1, ge=1)
    blr: float | None = bounded(1.5e-4, gt=0)  # lr = blr * effective_batch / 256
    lr: float | None = bounded(None, gt=0)  # absolute; replaces blr
    min_lr: float = bounded(0.0, ge=0)
    weight_decay: float = bounded(0.05, ge=0)
    weight_decay_end: float | None = bounded(None, ge=0)  # cosine schedule to this value (MSN: 0.04 -> 0.4)
    # each optimizer's own settings (OPTIMIZER_SETTINGS): null takes its default at load; one given
    # for the other optimizer is refused
    betas: tuple[float, float] | None = bounded(None, ge=0, lt=1)  # adamw (0.9, 0.95)
    momentum: float | None = bounded(None, ge=0, lt=1)  # lars (0.9)
    lars_eta: float | None = bounded(None, gt=0)  # lars: the trust coefficient (0.001; solo-learn CIFAR 0.02)
    lars_clip: bool | None = None  # lars: trust ratio / lr clipped at 1 (LARC, solo-learn's clip_lr; false)
    warmup_epochs: float = bounded(1.0, ge=0, per_run=True)  # epochs, or a percentage of train.epochs
    schedule_stretch: float = bounded(1.0, ge=1)  # cosine lr/wd schedules span stretch x the run (MSN official: 1.25)
    clip_grad: float | None = bounded(None, gt=0)

    def setting(self, key: str):
        """An optimizer setting in force: its value, or the default of `name`'s optimizer when null."""
        value = getattr(self, key)
        return OPTIMIZER_SETTINGS[self.name][key] if value is None else value

    def lr_in_force(self, world: int) -> float:
        """Absolute lr: `lr` if set, else blr * effective_batch / 256 (MAE's scaling rule)."""
        if self.lr is not None:
            return self.lr
        return self.blr * self.batch_size * self.accum_steps * world / 256

    def lr_source(self, world: int) -> str:
        """How the lr in force comes about, e.g. `optim.lr=0.001`, or
        `optim.blr=0.001 x 128 (batch) x 1 (accum) x 1 (world) / 256 = 0.0005`."""
        if self.lr is not None:
            return f"optim.lr={self.lr:g}"
        return (f"optim.blr={self.blr:g} x {self.batch_size} (batch) x {self.accum_steps} (accum) x {world} (world) "
                f"/ 256 = {self.lr_in_force(world):g}")


# the settings of each optim.name, with their defaults (AdamW: MAE's betas; LARS: solo-learn's)
OPTIMIZER_SETTINGS = {"adamw": {"betas": (0.9, 0.95)},
                      "lars": {"momentum": 0.9, "lars_eta": 0.001, "lars_clip": False}}


@dataclass
class TrainConfig:
    epochs: int = bounded(10, ge=1)
    seed: int = bounded(0, ge=0)
    device: str = one_of("auto", "auto", "cpu", "cuda", "mps", pattern=r"cuda:\d+", pattern_help="cuda:<index>")
    precision: str = one_of("fp32", "fp32", "bf16", "fp16")  # fp16 only on cuda
    log_every: int = bounded(10, ge=1)
    monitor_every: int = bounded(10, ge=1)  # steps between no-grad evaluations of monitored/inactive regularizers
    ckpt_every_steps: int = bounded(0, ge=0)  # 0: only at the end of each epoch
    keep_last: int = bounded(2, ge=1)
    online_probe: bool = True
    # where logged values, the config and analyze's pictures go: jsonl (always), tensorboard, wandb, mlflow
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    tensorboard: bool = False  # the older spelling of `tensorboard` in train.loggers
    wandb_mode: str | None = None  # online, offline, disabled; None: WANDB_MODE, else offline
    compile: bool = False  # torch.compile the whole step (forward + backward) as whole graphs, static shapes
    # with train.compile: torch.compile's mode; reduce-overhead adds CUDA graphs (CUDA only)
    compile_mode: str = one_of("default", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    sync_batchnorm: bool = True  # under DDP on CUDA: BatchNorm over the global batch, as the official codes
    progress: bool = True
    halt_after_steps: int | None = bounded(None, ge=1)  # stop early as if interrupted (to exercise --resume)
    strategy: str = one_of("ddp", "ddp", "fsdp")  # under torchrun: ddp (a replica per process) or fsdp (FSDP2, sharded per block)
    dist_timeout_s: float = bounded(900.0, ge=1, le=86400)  # under torchrun: a collective waits this long for a silent process
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~1/3 more compute
    knn_every: int | None = bounded(None, ge=0)  # epochs between online k-NN measurements; None: auto (when labelled); 0: off
    knn_bank: int = bounded(320, ge=1)  # random training images in the online k-NN memory bank
    knn_queries: int = bounded(160, ge=1)  # random test images it classifies
    # steps between RankMe / alpha-ReQ measurements of the frozen encoder (and after the last step);
    # None: every 200 steps, off under fsdp; 0: off
    rep_monitor_every: int | None = bounded(None, ge=0)
    rep_monitor_images: int = bounded(512, ge=2)  # fixed held-out images they are measured on (test split if any)

    def loggers_in_force(self) -> list[str]:
        return list(dict.fromkeys(["jsonl", *self.loggers, *(["tensorboard"] if self.tensorboard else [])]))


@dataclass
class Config:
    recipe: str = "custom"
    description: str = ""
    imports: list[str] = field(default_factory=list)  # modules imported first: their @register'ed names
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
def load_config(source: str | Path | dict, overrides: list[str] = (), *, world: int | None = None) -> Config:
    """A recipe name (`u-mae`, `cifar10/u-mae`), a YAML path or a mapping, plus `key=value` overrides.
    `world`: the number of processes the run will have, for the lr in force (None: as many as
    torchrun launched this one in, 1 without torchrun).

    Layers, lowest first: the preset, the recipe (or your file/mapping), the overrides. A later
    layer's setting wins over an earlier layer's, also across alternative keys (your `optim.blr`
    replaces the preset's `optim.lr`); one layer setting two alternatives is an error.
    """
    raw = read_recipe(source)
    defaults = raw.pop("regularizer_defaults", None)
    method_defaults = raw.pop("method_defaults", None)
    vit_defaults = raw.pop("vit_defaults", None)
    apply_overrides(raw, overrides)
    apply_vit_defaults(raw, vit_defaults)
    apply_method_defaults(raw, method_defaults)
    apply_regularizer_defaults(raw, defaults)
    from mimreg.plugins import absolute_import_paths

    raw["imports"] = absolute_import_paths(_as_list(raw.get("imports") or [], "imports"))
    fill_img_size(raw)
    return config_from_dict(raw, world=world)


def read_recipe(source: str | Path | dict) -> dict:
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
        where = "the config mapping"
    else:
        path = Path(source)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            raw, where = _read_yaml(path), str(path)
        else:
            raw, where = _recipe_by_name(str(source)), f"recipe {source}"
    check_layer(raw, where)
    preset = raw.pop("preset", None)
    if preset is not None:
        path = _preset_path(preset)
        base = _read_yaml(path)
        check_layer(base, str(path))
        raw = layer_over(take_vit_defaults(base), raw)
    return raw


def take_vit_defaults(preset: dict) -> dict:
    """A preset's `model.patch_size` is a default for ViTs only (a ResNet has no patches, and a
    patch size given for one is refused): moved to `vit_defaults`, applied once the arch is known."""
    model = preset.get("model")
    if isinstance(model, dict) and "patch_size" in model:
        preset = {**preset, "model": {k: v for k, v in model.items() if k != "patch_size"},
                  "vit_defaults": {"patch_size": model["patch_size"]}}
    return preset


def apply_vit_defaults(raw: dict, defaults: dict | None) -> None:
    from mimreg.models import is_vit

    model = raw.setdefault("model", {})
    if defaults and isinstance(model, dict) and is_vit(model.get("arch", ModelConfig.arch)):
        for key, value in defaults.items():
            model.setdefault(key, value)


def apply_method_defaults(raw: dict, defaults: dict | None) -> None:
    """A preset's `method_defaults: {mae: {decoder_dim: 96}}` fills the options of that method only,
    so one preset serves every method."""
    method = raw.setdefault("method", {})
    if isinstance(method, dict):
        for key, value in ((defaults or {}).get(method.get("name", "mae")) or {}).items():
            method.setdefault(key, value)


def apply_regularizer_defaults(raw: dict, defaults: dict | None) -> dict:
    """A preset's `regularizer_defaults: {magma: {start_epoch: 10%}}` fills keys a recipe (or --set)
    leaves out of a regularizer entry: schedules depend on the training length, which the preset
    sets. Monitors have no schedule and take none."""
    defaults = defaults or {}
    entries = raw.get("regularizers")
    if isinstance(entries, list):
        pair = RegularizerConfig.alternatives
        raw["regularizers"] = [{**with_side(defaults.get(e.get("name")) or {}, pair,
                                            side_given(e, pair, f"regularizers.{e.get('name')}")), **e}
                               if isinstance(e, dict) else e for e in entries]
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
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(raw).__name__}")
    return raw


def yaml_problem(err: yaml.YAMLError) -> str:
    """`line 3, column 7: mapping values are not allowed here`: the parser's point, on one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


# ---------------------------------------------------------------- layers, and the two pairs of alternative keys
# optim.blr or optim.lr; a regularizer's window (start_epoch, duration) or its gate_rec_loss (each
# class declares its pair as `alternatives`, the side in force by default first). A layer that sets
# one side of a pair replaces the side an earlier layer set; one layer setting both is an error.
def side_given(mapping: dict, pair: tuple[tuple[str, ...], ...], where: str) -> int | None:
    """Which side of `pair` the keys given (not null) in `mapping` set; an error if both."""
    given = [i for i, keys in enumerate(pair) if any(mapping.get(k) is not None for k in keys)]
    if len(given) > 1:
        shown = " and ".join(f"{k}={mapping[k]!r}" for keys in pair for k in keys if mapping.get(k) is not None)
        raise ConfigError(f"{where}: {shown} are alternatives, and only one can be in force; "
                          f"keep one of {' or '.join('/'.join(keys) for keys in pair)}")
    return given[0] if given else None


def with_side(mapping: dict, pair: tuple[tuple[str, ...], ...], side: int | None) -> dict:
    """`mapping` with the keys of the other side of `pair` than `side` set to null (None: as it is)."""
    return mapping if side is None else {**mapping, **{k: None for k in pair[1 - side]}}


def settle(mapping: dict, pair: tuple[tuple[str, ...], ...], where: str) -> dict:
    """The layers' result: the side set in force, the other null. A key of the pair left null takes
    its default, so with neither side set the default side (the first) is in force."""
    side = side_given(mapping, pair, where)
    given = {k: v for k, v in mapping.items() if v is not None or not any(k in keys for keys in pair)}
    return with_side(given, pair, side)


def pairs_in(raw: dict) -> list[tuple[str, dict, tuple[tuple[str, ...], ...]]]:
    """The mappings of one layer that hold a pair: (their key, the mapping, the pair)."""
    found = [("optim", raw["optim"], OptimConfig.alternatives)] if isinstance(raw.get("optim"), dict) else []
    for i, entry in enumerate(raw.get("regularizers") or []):
        if isinstance(entry, dict):
            found.append((f"regularizers.{entry.get('name', i)}", entry, RegularizerConfig.alternatives))
    defaults = raw.get("regularizer_defaults")
    for name, entry in (defaults.items() if isinstance(defaults, dict) else ()):
        if isinstance(entry, dict):
            found.append((f"regularizer_defaults.{name}", entry, RegularizerConfig.alternatives))
    return found


def check_layer(raw: dict, where: str) -> None:
    """One layer (a file, a mapping) may not set both sides of a pair."""
    for key, mapping, pair in pairs_in(raw):
        side_given(mapping, pair, f"{where}: {key}")


def layer_over(base: dict, top: dict) -> dict:
    """`top` (a recipe, a file) over `base` (its preset): a key of `top` wins, and so does the side
    of each pair it sets (the other side `base` set is dropped)."""
    base = copy.deepcopy(base)
    top_pairs = {key: mapping for key, mapping, _ in pairs_in(top)}
    for key, mapping, pair in pairs_in(base):
        if key in top_pairs:
            mapping.update(with_side(mapping, pair, side_given(top_pairs[key], pair, key)))
    return merge(base, top)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; lists (regularizers) are replaced, not concatenated."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ---------------------------------------------------------------- --set
def apply_overrides(raw: dict, items: list[str]) -> None:
    """Apply `--set` items in order. They form one layer: an item that sets a side of a pair drops
    the side an earlier layer (preset, recipe) set; items setting both sides are an error."""
    given: dict[int, tuple[dict, set[str]]] = {}  # id of a mapping the items set keys in -> it, those keys
    for item in items:
        node, keys = apply_override(raw, item)
        _, seen = given.setdefault(id(node), (node, set()))
        seen.update(k for k in keys if node.get(k) is not None)
        seen.difference_update(k for k in keys if node.get(k) is None)
    for key, mapping, pair in pairs_in(raw):
        seen = given.get(id(mapping), (None, set()))[1]
        if seen:
            side = side_given({k: mapping[k] for k in seen}, pair, f"--set {key}")
            mapping.update(with_side(mapping, pair, side))


def apply_override(raw: dict, item: str) -> tuple[Any, list[str]]:
    """`optim.blr=1e-3`, `regularizers.magma.weight=2`, `regularizers=[]` (YAML values), and
    `KEY+=VALUE` to append to a list (`imports+=my_module`, `monitor+=magma`). Returns the mapping
    it set keys in, and those keys."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    append = key.endswith("+")
    key = key.removesuffix("+")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item}: the value is not valid YAML ({yaml_problem(err)}); quote it, e.g. "
                          f"--set '{key}=[0.5, 1.0]'") from None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_entry(node, part, ".".join(parts[: i + 1]))
        else:
            # the list sections: a recipe without any entry has an empty list, not a new section
            node = node.setdefault(part, [] if node is raw and part in ("regularizers", "monitor") else {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(value, dict) or append:
            raise ConfigError(f"--set {key}: a list entry takes a mapping, e.g. {key}='{{weight: 2}}'")
        entry = _list_entry(node, last, key)
        entry.update(value)
        return entry, list(value)
    if append:
        current = node.setdefault(last, [])
        if not isinstance(current, list):
            raise ConfigError(f"--set {key}+=...: {key} is not a list")
        current.extend(value if isinstance(value, list) else [value])
        return node, []
    node[last] = value
    return node, [last]


def _list_entry(entries: list, selector: str, key: str) -> dict:
    if selector.isdigit() and int(selector) < len(entries):
        return entries[int(selector)]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == selector:
            return entry
    names = [e.get("name") for e in entries if isinstance(e, dict)]
    raise ConfigError(f"--set {key}: no entry {selector!r} in this list; it has {names} "
                      f"(to add one, append it, e.g. regularizers+='{{name: magma}}')")


# ---------------------------------------------------------------- what the data says
def fill_img_size(raw: dict) -> None:
    """Write the image size into `data.img_size` when it is not given: the dataset's own, or for
    an image folder the size its images have (read from a few files), so config.yaml says it."""
    from mimreg.data.transforms import DEFAULT_IMG_SIZES

    data = raw.setdefault("data", {})
    if not isinstance(data, dict) or data.get("img_size") is not None:
        return
    name = data.get("name", DataConfig.name)
    if name == "imagefolder":
        if not data.get("root"):
            raise ConfigError("data.name=imagefolder needs data.root, the folder of images")
        from mimreg.data.image_size import infer_image_size

        data["img_size"] = infer_image_size(data["root"])
    elif name in ("hf", "webdataset"):
        data["img_size"] = _pool_image_size(name, data)
    elif name in DEFAULT_IMG_SIZES:
        data["img_size"] = DEFAULT_IMG_SIZES[name]


def _pool_image_size(name: str, data: dict) -> int:
    from mimreg.data import load_dataset
    from mimreg.data.image_size import pool_image_size

    columns = build_dataclass(DataConfig, data, "config.data").hf_columns()
    pool = load_dataset(name, "train", data.get("root"), download=bool(data.get("download")), columns=columns)
    return pool_image_size(pool, f"the train split of {data.get('root')}")


def check_hf_settings(data: DataConfig) -> None:
    """The data.hf_* settings are only read for data.name hf: set for another dataset, they are refused."""
    if data.name == "hf":
        return
    for f in dataclasses.fields(DataConfig):
        if f.name.startswith("hf_") and getattr(data, f.name) != f.default:
            raise ConfigError(f"data.{f.name} is set but data.name is {data.name!r}; it is read for data.name: hf "
                              f"only: drop it (--set data.{f.name}={f.default if f.default is not None else 'null'})")


# ---------------------------------------------------------------- validation
SECTIONS = ("data", "model", "method", "optim", "train")  # the mappings of keys, never null
def config_from_dict(raw: dict, *, check_run_length: bool = True, world: int | None = None) -> Config:
    """A Config from the flat mapping (a config.yaml, a checkpoint's config, or load_config's
    layers), every key and value checked. Schedules given as percentages of the run are turned
    into epochs here, so the Config (and the config.yaml written from it) holds epochs."""
    from mimreg.plugins import import_user_modules

    raw = dict(raw)
    for section in SECTIONS:
        if section in raw and raw[section] is None:
            raise ConfigError(f"{section}=null: a section cannot be null (that would put every {section} key back "
                              f"to mimreg's defaults); set single keys instead, e.g. {section}.KEY=VALUE")
    import_user_modules(_as_list(raw.get("imports") or [], "imports"))
    from mimreg.methods import METHODS
    from mimreg.regularizers import REGULARIZERS

    method_raw = raw.pop("method", {}) or {}
    regs_raw = [_entry_mapping(r) for r in _as_list(raw.pop("regularizers", []) or [], "regularizers")]
    monitor_raw = [_monitor_mapping(r, i) for i, r in enumerate(_as_list(raw.pop("monitor", []) or [], "monitor"))]
    epochs = build_dataclass(TrainConfig, raw.get("train"), "config.train").epochs
    if isinstance(raw.get("optim"), dict):
        optim = settle(raw["optim"], OptimConfig.alternatives, "config.optim")
        raw["optim"] = resolve_run_fractions(optim, OptimConfig, epochs, "config.optim")
    cfg = build_dataclass(Config, raw, "config")
    from mimreg.models import is_vit

    if is_vit(cfg.model.arch) and cfg.model.patch_size is None:
        cfg.model.patch_size = VIT_PATCH_SIZE
    cfg.method = _named_entry(MethodConfig, method_raw, METHODS, "method")
    cfg.regularizers = []
    for i, entry in enumerate(regs_raw):
        if isinstance(entry, dict):
            where = f"regularizers.{entry.get('name', i)}"
            entry = resolve_window(settle(entry, RegularizerConfig.alternatives, where), RegularizerConfig, epochs, where)
        cfg.regularizers.append(_named_entry(RegularizerConfig, entry, REGULARIZERS, f"regularizers[{i}]"))
    cfg.monitor = [_named_entry(RegularizerConfig, r, REGULARIZERS, f"monitor[{i}]") for i, r in enumerate(monitor_raw)]
    validate(cfg, check_run_length, world)
    return cfg


def config_from_stored(raw: dict) -> Config:
    """The Config of a run's config.yaml or checkpoint, also one written before settings were
    checked as they are now, read as that run ran: its `lr` was in force over `blr`, its monitors'
    windows and weights had no effect, and its schedules are what they were (not checked against
    the run length: they are a record, not a new setting)."""
    raw = copy.deepcopy(raw)
    optim = raw.get("optim")
    if isinstance(optim, dict) and optim.get("lr") is not None:
        optim["blr"] = None
    raw["monitor"] = [{k: v for k, v in m.items() if k not in MONITOR_UNUSED} if isinstance(m, dict) else m
                      for m in raw.get("monitor") or []]
    return config_from_dict(raw, check_run_length=False)


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of entries, got {type(value).__name__}")
    return value


def _entry_mapping(raw: Any) -> Any:
    return {"name": raw} if isinstance(raw, str) else raw


# what a monitor takes no setting for (it is never trained with), with the value that means "none"
MONITOR_UNUSED = {"weight": None, "start_epoch": 0, "duration": None, "gate_rec_loss": None}


def _monitor_mapping(raw: Any, index: int) -> dict:
    """A monitor is computed without gradient every train.monitor_every steps: a weight or a
    schedule given for one would not be in force, so it is refused."""
    raw = _entry_mapping(raw)
    if isinstance(raw, dict):
        unused = [k for k, none in MONITOR_UNUSED.items() if raw.get(k) not in (None, none)]
        if unused:
            raise ConfigError(f"monitor[{index}] ({raw.get('name')}): {unused[0]} has no effect on a monitor "
                              "(it is logged, never trained with); move the entry to regularizers to train with it")
    return raw


# ---------------------------------------------------------------- building dataclasses
def _named_entry(cls: type, raw: Any, registry: dict, where: str):
    """Split a flat `{name: ..., <common keys>, <option keys>}` into cls(..., options=Options(...))."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{where} needs a `name`; choose one of {sorted(registry)}")
    name = raw["name"]
    if name not in registry:
        raise ConfigError(f"{where}: unknown name {name!r}; choose one of {sorted(registry)}"
                          + suggest(str(name), registry)
                          + " (a module of your own that registers it goes in `imports:` or --import)")
    common = {f.name for f in dataclasses.fields(cls)} - {"options"}
    options_cls = registry[name].Options
    option_keys = {f.name for f in dataclasses.fields(options_cls)}
    unknown = set(raw) - common - option_keys
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{where} ({name}): unknown key {key!r}; valid keys are "
                          f"{sorted((common | option_keys) - {'name'})}" + suggest(key, common | option_keys))
    # values are named by the key a user writes: method.mask_ratio, regularizers.magma.weight
    key = "method" if cls is MethodConfig else f"{where.split('[')[0]}.{name}"
    entry = build_dataclass(cls, {k: v for k, v in raw.items() if k in common}, key)
    entry.options = build_dataclass(options_cls, {k: v for k, v in raw.items() if k in option_keys}, key)
    return entry


def validate(cfg: Config, check_run_length: bool = True, world: int | None = None) -> None:
    """Checks that need more than one key, or a registry: composition, schedules, image geometry.
    (The range of each key is declared on its field and checked as it is read.)"""
    from mimreg.data import DATASET_NAMES
    from mimreg.models import ARCHS
    from mimreg.regularizers import REGULARIZERS

    for key, value, allowed in (("data.name", cfg.data.name, DATASET_NAMES), ("model.arch", cfg.model.arch, sorted(ARCHS))):
        if value not in allowed:
            raise ConfigError(f"{key}: unknown value {value!r}; choose one of {list(allowed)}")
    check_model(cfg)
    settle_optimizer(cfg.optim)
    check_loggers(cfg.train)
    if cfg.train.compile_mode != "default" and not cfg.train.compile:
        raise ConfigError(f"train.compile_mode={cfg.train.compile_mode!r} needs train.compile: true (it is false); "
                          "set train.compile: true or drop train.compile_mode")
    check_hf_settings(cfg.data)
    if cfg.data.decode_on_device and cfg.data.pipeline != "loader":
        raise ConfigError("data.decode_on_device works with the loader pipeline (image files read in workers); "
                          f"set data.pipeline: loader (it is {cfg.data.pipeline!r})")
    if cfg.data.jpeg_draft and (cfg.data.pipeline == "device" or cfg.data.decode_on_device):
        where = "data.decode_on_device decodes on the device" if cfg.data.decode_on_device else "data.pipeline is 'device'"
        raise ConfigError(f"data.jpeg_draft=true crops JPEGs in the loader pipeline's workers, but {where}; "
                          "drop data.jpeg_draft (--set data.jpeg_draft=null) or use data.pipeline: loader")
    for section, entries in (("regularizers", cfg.regularizers), ("monitor", cfg.monitor)):
        names = [r.name for r in entries]
        for reg in entries:
            if names.count(reg.name) > 1:
                raise ConfigError(f"{section}: {reg.name!r} is listed twice; list each once")
    batch_wide = [r.name for r in cfg.regularizers + cfg.monitor if REGULARIZERS[r.name].batch_wide]
    if batch_wide and cfg.optim.batch_size < 2:
        raise ConfigError(f"regularizers {batch_wide} are batch-wide and need optim.batch_size >= 2, "
                          f"got {cfg.optim.batch_size}")
    for section, entries in (("regularizers", cfg.regularizers), ("monitor", cfg.monitor)):
        for reg in entries:
            REGULARIZERS[reg.name].check_options(reg.options, f"{section}.{reg.name}")
            if reg.gather is None:  # resolved here, so that a run's config.yaml says which it used
                reg.gather = REGULARIZERS[reg.name].default_gather
    if check_run_length:
        check_schedules(cfg, world)
    check_geometry(cfg)


LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")  # train.loggers; all but jsonl write through engine/loggers/


def check_loggers(train: TrainConfig) -> None:
    """Each logger known and its package installed (found, not imported: wandb takes seconds to import)."""
    import importlib.util

    for name in train.loggers_in_force():
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: unknown logger {name!r}; choose from {list(LOGGERS)}")
        if name != "jsonl" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.loggers lists {name}, which is not installed: pip install 'mimreg[{name}]'")
    if train.wandb_mode not in (None, "online", "offline", "disabled"):
        raise ConfigError(f"train.wandb_mode: unknown value {train.wandb_mode!r}; choose one of "
                          "['online', 'offline', 'disabled'] (or null: WANDB_MODE, else offline)")


def settle_optimizer(optim: OptimConfig) -> None:
    """A setting of the other optimizer than optim.name is refused (it would not be in force); the
    settings of this one left null take their defaults, so config.yaml states them."""
    for other, settings in OPTIMIZER_SETTINGS.items():
        for key in settings:
            value = getattr(optim, key)
            if other != optim.name and value is not None:
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"optim.{key}={shown} is a setting of {other}, and optim.name is {optim.name}; "
                                  f"drop it (--set optim.{key}=null) or set optim.name: {other}")
    for key in OPTIMIZER_SETTINGS[optim.name]:
        setattr(optim, key, optim.setting(key))


def check_model(cfg: Config) -> None:
    """Each model key is for one kind of encoder: `patch_size` for ViTs, `stem` for ResNets; and a
    ResNet encodes whole images, which only the joint-embedding methods use."""
    from mimreg.methods import METHODS
    from mimreg.models import is_vit

    model = cfg.model
    if is_vit(model.arch):
        if model.stem != "auto":
            raise ConfigError(f"model.stem={model.stem!r} is for resnet archs, {model.arch} has a patch embedding; "
                              "drop model.stem")
        return
    if model.patch_size is not None:
        raise ConfigError(f"model.patch_size={model.patch_size}: {model.arch} has no patches; drop model.patch_size "
                          "(it is for vit_* archs)")
    if not METHODS[cfg.method.name].accepts_resnet:
        raise ConfigError(f"method {cfg.method.name} needs a ViT encoder (model.arch vit_*); {model.arch} has no "
                          "patches (ResNets serve the joint-embedding methods: simclr, vicreg, byol, barlow, mse)")


def check_geometry(cfg: Config) -> None:
    """Whole patches; then the method refuses what its options cannot do on this patch grid
    (e.g. a mask that leaves a view no visible patch). A ResNet takes any image size."""
    from mimreg.methods import METHODS
    from mimreg.models import is_vit

    if not is_vit(cfg.model.arch):
        return
    size, patch = cfg.img_size, cfg.model.patch_size
    if size % patch:
        raise ConfigError(f"data.img_size={size} is not a multiple of model.patch_size={patch}; set data.img_size "
                          "to a multiple (images are resized to it) or change model.patch_size")
    METHODS[cfg.method.name].check_options(cfg.method.options, size, patch)


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


def config_text(cfg: Config, notes: list[str] = ()) -> str:
    """The config as YAML; `notes` (e.g. the lr in force) go first as `#` comment lines."""
    header = "".join(f"# {line}\n" for note in notes for line in note.splitlines())
    return header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def dump_config(cfg: Config, path: Path, notes: list[str] = ()) -> None:
    path.write_text(config_text(cfg, notes))
