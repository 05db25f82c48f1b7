"""A study file: recipes x override axes x seeds, and the evaluations run on every finished run.

    description: U-MAE's weight at CPU scale           # optional
    set: {data.subset: 10000, train.epochs: 12}       # every run (any `--set` key)
    seeds: 5                                          # 0..4, or a list [0, 3, 7]
    grids:                                            # or `recipes:` + `axes:` at the top for one grid
      - recipes: [cifar10-cpu/mae]
      - recipes: [cifar10-cpu/u-mae]
        axes: {regularizers.uniformity.weight: [0.003, 0.01, 0.03]}
    evaluations:
      - {protocols: [linear, knn, erank], pools: [cls, mean], train_images: 10000}
      - {protocol: finetune, settings: {epochs: 4}}
      - {protocol: analyze, pictures: [spectrum]}
    run: {parallel: 2, threads: 1, device: cpu}        # the local executor's defaults

Everything is checked at load, before anything runs: every key, every evaluation, and every grid
point against its recipe (`load_config`), so that a typo fails in one line instead of in the queue.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mimreg.errors import ConfigError, MimregError

STUDY_KEYS = {"description", "set", "seeds", "grids", "recipes", "axes", "evaluations", "run"}
GRID_KEYS = {"recipes", "axes", "set", "seeds"}
RUN_KEYS = {"parallel", "threads", "device"}
FROZEN_PROTOCOLS = ("linear", "knn", "erank", "lowshot")
PROTOCOLS = (*FROZEN_PROTOCOLS, "robustness", "finetune", "analyze")
POOLS = ("cls", "mean", "cls_prenorm")
EVALUATION_KEYS = {
    "frozen": {"protocols", "protocol", "pools", "train_images", "test_images", "linear_protocol", "epochs", "data",
               "data_root"},
    "robustness": {"protocol", "pool", "train_images", "test_images", "data", "data_root"},
    "finetune": {"protocol", "settings", "data", "data_root"},
    "analyze": {"protocol", "pictures", "test_images", "data", "data_root"},
}
_UNSAFE = re.compile(r"[^A-Za-z0-9.+=-]+")


@dataclass(frozen=True)
class Point:
    """One run of the study: a recipe, its overrides (the study's `set`, the axes' values, the seed)."""

    name: str
    recipe: str
    overrides: tuple[str, ...]
    axes: tuple[tuple[str, Any], ...]  # (key, value) of its grid's own `set` and each axis, in the file's order
    seed: int
    varied: tuple[str, ...] = ()  # the keys of its grid's axes

    @property
    def group(self) -> str:
        """The point without its seed: the runs that seeds repeat."""
        return self.name.rsplit("_seed", 1)[0]

    @property
    def cost_key(self) -> tuple:
        """The point without its seed and axis values: what the cost of an epoch is taken to depend on."""
        kept = [o for o in self.overrides if o.split("=", 1)[0] not in (*self.varied, "train.seed", "train.epochs")]
        return (self.recipe, *kept)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of every finished run. `key` names it in the study's ledger."""

    protocol: str  # a frozen protocol list joined by "+", robustness, finetune or analyze
    options: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.protocol}:{json.dumps(self.options, sort_keys=True)}"


@dataclass
class RunSettings:
    """How the local executor runs the points: `parallel` runs at a time with `threads` each."""

    parallel: int | None = None  # None: the cores (CPU) or the GPUs (cuda) over `threads`
    threads: int = 1
    device: str = "cpu"


@dataclass
class Study:
    path: Path
    description: str
    points: list[Point]
    evaluations: list[Evaluation]
    run: RunSettings
    text: str  # the study file as read, kept with the study's results
    extra: list[str] = field(default_factory=list)  # the command's --set items


def load_study(path: str | Path, check_points: bool = True, extra: list[str] = ()) -> Study:
    """Read and check a study file (module docstring); `check_points`: load every grid point's config.
    `extra`: `--set KEY=VALUE` items given with the command, last in every point's overrides (a key
    that a grid varies or sets itself is refused: it would not be in force everywhere)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"study file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"study file {path}: expected a mapping of {sorted(STUDY_KEYS)}")
    _refuse_unknown(raw, STUDY_KEYS, f"study file {path}")
    if "grids" in raw and ("recipes" in raw or "axes" in raw):
        raise ConfigError(f"study file {path}: give either `grids:` or one grid's `recipes:`/`axes:` at the top")
    grids = raw.get("grids") if "grids" in raw else [{k: raw[k] for k in ("recipes", "axes") if k in raw}]
    if not isinstance(grids, list) or not grids:
        raise ConfigError(f"study file {path}: `grids` must be a list of {{recipes: [...], axes: {{...}}}}")
    base_set = _mapping(raw.get("set"), "set")
    seeds = _seeds(raw.get("seeds", 1), "seeds")
    points: dict[str, Point] = {}
    for index, grid in enumerate(grids):
        for point in _grid_points(grid, index, base_set, seeds, path.parent, list(extra)):
            same = points.setdefault(point.name, point)  # the same point named twice runs once
            if same.overrides != point.overrides or same.recipe != point.recipe:
                raise ConfigError(f"study file {path}: two grids give point {point.name} different settings "
                                  f"({list(same.overrides)} and {list(point.overrides)}); give one of them an axis")
    study = Study(path, str(raw.get("description", "")), list(points.values()),
                  [_evaluation(e, i) for i, e in enumerate(_as_list(raw.get("evaluations", []), "evaluations"))],
                  _run_settings(raw.get("run")), text, list(extra))
    if check_points:
        for point in study.points:
            check_point(point)
    return study


def _grid_points(grid: Any, index: int, base_set: dict, seeds: list[int], folder: Path,
                 extra: list[str]) -> list[Point]:
    where = f"grids[{index}]"
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: expected a mapping with recipes (and axes, set, seeds)")
    _refuse_unknown(grid, GRID_KEYS, where)
    recipes = [_recipe_source(r, folder) for r in _as_list(grid.get("recipes"), f"{where}.recipes")]
    if not recipes:
        raise ConfigError(f"{where}: name at least one recipe, e.g. recipes: [cifar10-cpu/mae]")
    axes = _mapping(grid.get("axes"), f"{where}.axes")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.axes.{key}: an axis is a non-empty list of values, e.g. [0.01, 0.03]")
    own = _mapping(grid.get("set"), f"{where}.set")  # a grid's own settings name its points, as axes do
    fixed = {k: v for k, v in base_set.items() if k not in own}
    seeds = _seeds(grid["seeds"], f"{where}.seeds") if "seeds" in grid else seeds
    for item in extra:
        key = item.split("=", 1)[0].strip().removesuffix("+")
        if key in own or key in axes or key == "train.seed":
            raise ConfigError(f"--set {item}: {where} sets {key} itself (an axis, its own set, or the seeds); "
                              "change it in the study file")
    points = []
    for recipe in recipes:
        for values in itertools.product(*axes.values()):
            chosen = (*own.items(), *zip(axes, values))
            for seed in seeds:
                overrides = [_override(k, v) for k, v in [*fixed.items(), *chosen]] + [f"train.seed={seed}", *extra]
                points.append(Point(point_name(recipe, chosen, seed), recipe, tuple(overrides), chosen, seed,
                                    tuple(axes)))
    return points


def point_name(recipe: str, axes, seed: int) -> str:
    """A readable, unique folder name: recipe, then key=value of each axis, then the seed."""
    parts = [Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else recipe.replace("/", "-")]
    parts += [f"{key.split('.', 1)[-1]}={json.dumps(value) if not isinstance(value, str) else value}"
              for key, value in axes]
    return "_".join(_UNSAFE.sub("-", p).strip("-") for p in parts) + f"_seed{seed}"


def check_point(point: Point) -> None:
    """Load the point's config: an axis naming no key, a value out of range, or a recipe that does
    not accept a value fails here, in one line naming the point."""
    from mimreg.config import load_config

    try:
        load_config(point.recipe, list(point.overrides))
    except MimregError as err:
        raise ConfigError(f"study point {point.name} ({point.recipe} with "
                          f"{', '.join(point.overrides) or 'no overrides'}): {err}") from None


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}" if not isinstance(value, str) else f"{key}={value}"


def _recipe_source(recipe: Any, folder: Path) -> str:
    if not isinstance(recipe, str) or not recipe:
        raise ConfigError(f"recipe {recipe!r}: give a recipe name (cifar10-cpu/mae) or a .yaml file")
    if recipe.endswith((".yaml", ".yml")) and not Path(recipe).is_absolute():
        return str((folder / recipe).resolve())  # relative to the study file
    return recipe


def _evaluation(raw: Any, index: int) -> Evaluation:
    where = f"evaluations[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{protocols: [linear, knn], pools: [cls]}}")
    protocols = _as_list(raw.get("protocols", raw.get("protocol")), f"{where}.protocols")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ConfigError(f"{where}: unknown protocol {unknown or protocols}; choose from {list(PROTOCOLS)}")
    others = [p for p in protocols if p not in FROZEN_PROTOCOLS]
    if others and len(protocols) > 1:
        raise ConfigError(f"{where}: {others[0]} is an evaluation of its own; list only frozen protocols "
                          f"{list(FROZEN_PROTOCOLS)} together")
    kind = others[0] if others else "frozen"
    _refuse_unknown(raw, EVALUATION_KEYS[kind], where)
    options = {k: v for k, v in raw.items() if k not in ("protocol", "protocols")}
    pools = _as_list(options.get("pools", options.get("pool", "cls")), f"{where}.pools")
    bad = [p for p in pools if p not in POOLS]
    if bad:
        raise ConfigError(f"{where}: unknown pool {bad}; choose from {list(POOLS)}")
    for key in ("train_images", "test_images", "epochs"):
        if key in options and not (isinstance(options[key], int) and options[key] >= 1):
            raise ConfigError(f"{where}.{key}={options[key]!r}: give a whole number >= 1")
    if kind == "finetune":
        _check_finetune_settings(_mapping(options.get("settings"), f"{where}.settings"), where)
    return Evaluation("+".join(protocols) if kind == "frozen" else kind, options)


def _check_finetune_settings(settings: dict, where: str) -> None:
    from mimreg.eval.finetune_config import FinetuneConfig

    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    _refuse_unknown(settings, names, f"{where}.settings")


def _run_settings(raw: Any) -> RunSettings:
    raw = _mapping(raw, "run")
    _refuse_unknown(raw, RUN_KEYS, "run")
    settings = RunSettings(**raw)
    if settings.parallel is not None and not (isinstance(settings.parallel, int) and settings.parallel >= 1):
        raise ConfigError(f"run.parallel={settings.parallel!r}: give a whole number of runs at a time >= 1")
    if not (isinstance(settings.threads, int) and settings.threads >= 1):
        raise ConfigError(f"run.threads={settings.threads!r}: give a whole number of threads per run >= 1")
    if settings.device not in ("cpu", "cuda"):
        raise ConfigError(f"run.device={settings.device!r}: choose cpu, or cuda (one run per GPU)")
    return settings


def _seeds(raw: Any, where: str) -> list[int]:
    seeds = list(range(raw)) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{where}={raw!r}: give a count (5: seeds 0..4) or a list of distinct seeds >= 0")
    return seeds


def _mapping(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {raw!r}")
    return dict(raw)


def _as_list(raw: Any, where: str) -> list:
    if raw is None:
        return []
    return list(raw) if isinstance(raw, list) else [raw]


def _refuse_unknown(raw: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {sorted(known)}")
