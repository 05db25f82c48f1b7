"""Schedules that follow the run's length: settings given as a percentage of train.epochs ("10%")
turned into epochs, and the checks that every window and warm-up fits the run."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from mimreg.bounds import takes_fraction_of_run
from mimreg.errors import ConfigError


def parse_percent(value: Any, key: str) -> float | None:
    """`"10%"` -> 10.0; None for a value that is not a percentage string."""
    if not isinstance(value, str) or not value.strip().endswith("%"):
        return None
    try:
        percent = float(value.strip()[:-1])
    except ValueError:
        percent = float("nan")
    if not 0 <= percent <= 100:
        raise ConfigError(f"{key}={value!r}: a percentage of the run (train.epochs) must be between 0% and 100%")
    return percent


def resolve_run_fractions(mapping: dict, cls: type, epochs: int, where: str) -> dict:
    """Percentages of the run (`"10%"`) in the fields that take them, turned into epochs: exact
    for a float field, rounded (half up) for an integer one, no lower than the field's range."""
    out = dict(mapping)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        percent = parse_percent(out.get(f.name), f"{where}.{f.name}") if takes_fraction_of_run(f) else None
        if percent is None:
            continue
        value = percent * epochs / 100
        if int in typing.get_args(hints[f.name]) or hints[f.name] is int:
            low = f.metadata["mimreg_check"].low or 0
            value = max(int(low), math.floor(value + 0.5))
        out[f.name] = value
    return out


def resolve_window(entry: dict, cls: type, epochs: int, where: str) -> dict:
    """A regularizer entry's window (fields of `cls`) in epochs. A window given wholly in percentages
    stays inside the run (rounding may not push its end past the last epoch)."""
    out = resolve_run_fractions(entry, cls, epochs, where)
    start, duration = parse_percent(entry.get("start_epoch"), ""), parse_percent(entry.get("duration"), "")
    if start is not None and duration is not None and start + duration <= 100:
        out["duration"] = max(1, min(out["duration"], epochs - out["start_epoch"]))
    return out


def check_schedules(cfg, world: int | None = None) -> None:
    """Windows inside the run, a warm-up shorter than the run, a final lr no higher than the peak
    (for `world` processes: the lr from optim.blr grows with them; None: as torchrun launched)."""
    from mimreg.distributed import launched_world_size

    world = launched_world_size() if world is None else world
    optim = cfg.optim
    if optim.min_lr > optim.lr_in_force(world):
        raise ConfigError(f"optim.min_lr={optim.min_lr:g} is above the lr in force ({optim.lr_source(world)}): the lr "
                          f"would climb during the cosine decay; set optim.min_lr <= {optim.lr_in_force(world):g} "
                          "(e.g. 0)")
    epochs = cfg.train.epochs
    if cfg.optim.warmup_epochs >= epochs:
        raise ConfigError(f"optim.warmup_epochs={cfg.optim.warmup_epochs:g} is as long as the run "
                          f"(train.epochs={epochs}) or longer: the lr would never reach its peak; set a shorter "
                          "warm-up, e.g. optim.warmup_epochs=10%")
    for reg in cfg.regularizers:
        if reg.gate_rec_loss is not None:
            continue  # the gate switches it on, not the window
        key = f"regularizers.{reg.name}"
        if reg.start_epoch >= epochs:
            raise ConfigError(f"{key}.start_epoch={reg.start_epoch} is not inside the run (train.epochs={epochs}): "
                              f"{reg.name} would never switch on; lower it or give a percentage of the run, "
                              "e.g. start_epoch: 10%")
        if reg.duration is not None and reg.start_epoch + reg.duration > epochs:
            raise ConfigError(f"{key}: the window start_epoch={reg.start_epoch}, duration={reg.duration} ends after "
                              f"the run (train.epochs={epochs}); set duration <= {epochs - reg.start_epoch}, "
                              "null (until the end), or percentages of the run, e.g. duration: 50%")


def step_counts(images: int, batch: int, world: int, accum: int, epochs: int,
                warmup_epochs: float) -> tuple[int, int, int]:
    """(optimizer steps per epoch, warm-up steps, total steps) of a run over `images` pretraining
    images: an epoch is whole global micro-batches (the tail dropped) in whole cycles of `accum`."""
    per_epoch = images // (batch * world) // accum
    return per_epoch, int(round(warmup_epochs * per_epoch)), epochs * per_epoch
