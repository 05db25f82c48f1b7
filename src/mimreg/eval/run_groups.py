"""Runs grouped by their settings: each run folder's config.yaml read as dotted keys
(`optim.lr`, `regularizers.uniformity.weight`), and the runs that agree on the chosen keys (the
grid's axes) form one group, whose runs differ by their seed (`train.seed`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mimreg.errors import MimregError

SEED = "train.seed"
# settings that do not change what a run learns (paths, logging, checkpointing, where it ran), nor
# what follows from other keys (description: from the recipe); never a default axis
BOOKKEEPING = frozenset({
    "description", "imports", "data.root", "data.download", "data.num_workers", "data.cache_dir",
    "data.device_memory_gb", "train.device", "train.log_every", "train.monitor_every", "train.ckpt_every_steps",
    "train.keep_last", "train.progress", "train.tensorboard", "train.loggers", "train.wandb_mode", "train.dist_timeout_s", "train.knn_every",
    "train.knn_bank", "train.knn_queries", "train.rep_monitor_every", "train.rep_monitor_images"})


@dataclass
class Group:
    """Runs that agree on every axis: `values` by axis, the runs and their seeds in the order given."""

    values: dict[str, object]
    runs: list[str] = field(default_factory=list)
    seeds: list[object] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " ".join(f"{key}={text(value)}" for key, value in self.values.items())

    @property
    def paired(self) -> bool:
        """Whether its runs can be told apart by seed (one run per seed), so that seeds can pair them."""
        return None not in self.seeds and len(set(self.seeds)) == len(self.seeds)


def text(value) -> str:
    """A config value as written on the command line (`--set key=value`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(text(v) for v in value) + "]"
    return str(value)


def flat_config(run_dir: str | Path) -> dict[str, object]:
    """The run's config.yaml as {dotted key: value}; a list of named entries (regularizers, monitor)
    gives `<list>` = their names and `<list>.<name>.<key>` for their settings."""
    path = Path(run_dir) / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MimregError(f"{run_dir} has no config.yaml, which grouping reads; pass the run folders pretraining "
                          "wrote, or leave out --group-by") from None
    except (OSError, yaml.YAMLError) as err:
        raise MimregError(f"cannot read {path}: {err}; restore it from the run's checkpoint or leave out --group-by") \
            from None
    if not isinstance(raw, dict):
        raise MimregError(f"{path} is not a mapping of settings; restore it or leave out --group-by")
    return _flatten(raw, "")


def _flatten(raw: dict, prefix: str) -> dict[str, object]:
    out = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            out[name] = [v["name"] for v in value]
            for entry in value:
                out.update(_flatten({k: v for k, v in entry.items() if k != "name"}, f"{name}.{entry['name']}."))
        else:
            out[name] = value
    return out


def grid_axes(configs: list[dict[str, object]]) -> list[str]:
    """The keys that tell the runs apart: `recipe`, then every key in config order whose value
    differs among the runs (a key some runs lack counts as null there: MAE's uniformity weight),
    leaving out the seed, BOOKKEEPING and keys that split the runs no finer than the axes before them."""
    keys = list(dict.fromkeys(k for config in configs for k in config))
    keys.sort(key=lambda k: k != "recipe")
    axes: list[str] = []
    for key in keys:
        if key == SEED or key in BOOKKEEPING:
            continue
        if _partition(configs, axes + [key]) != _partition(configs, axes):
            axes.append(key)
    return axes


def _partition(configs: list[dict], keys: list[str]) -> int:
    return len({tuple(text(config.get(k)) for k in keys) for config in configs})


def group_runs(run_dirs: list[str | Path], group_by: list[str] | None) -> tuple[list[str], list[Group]]:
    """The axes (`group_by`, or grid_axes when None) and the groups, in the order of their first run."""
    configs = [flat_config(run) for run in run_dirs]
    axes = grid_axes(configs) if group_by is None else group_by
    known = set().union(*configs)
    unknown = [key for key in axes if key not in known]
    if unknown:
        raise MimregError(f"--group-by {','.join(unknown)}: no run has that setting; give dotted config keys such "
                          f"as recipe, optim.lr (these differ among the runs: {','.join(grid_axes(configs)) or 'none'})")
    groups: dict[tuple, Group] = {}
    for run, config in zip(run_dirs, configs):
        values = {key: config.get(key) for key in axes}
        group = groups.setdefault(tuple(text(v) for v in values.values()), Group(values))
        group.runs.append(str(run))
        group.seeds.append(config.get(SEED))
    return axes, list(groups.values())


def find_group(groups: list[Group], wanted: str | None) -> Group:
    """The group `wanted` names: its label, or some of its KEY=VALUE (or a bare VALUE); None: the first."""
    if wanted is None:
        return groups[0]
    items = wanted.split()
    found = [g for g in groups if all(_matches(g, item) for item in items)]
    if len(found) != 1:
        problem = "no group" if not found else f"{len(found)} groups"
        raise MimregError(f"--baseline {wanted!r} matches {problem}; name one of: "
                          + "; ".join(g.label or "(all runs)" for g in groups))
    return found[0]


def _matches(group: Group, item: str) -> bool:
    key, equals, value = item.partition("=")
    if not equals:
        return any(text(v) == item for v in group.values.values())
    return key in group.values and text(group.values[key]) == value
