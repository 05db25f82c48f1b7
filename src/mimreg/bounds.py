"""Declared ranges and choices of config fields, kept on the dataclass fields themselves.

`bounded(0.75, gt=0, lt=1)` and `one_of("fp32", "fp32", "bf16")` stand where a plain default
would; the config loader reads the declaration (`field_check`) of every field it fills, so each
section, method and regularizer states its own ranges once, next to its defaults. A field whose
range cannot be known from its own value (a block index, checked against the encoder depth when
it is built) says so with `unbounded`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

CHECK = "mimreg_check"  # the metadata key of a field's declaration
PER_RUN = "mimreg_per_run"  # the field also takes a percentage of train.epochs ("10%")


def _number(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """low <= x (< when low_open) and x <= high (< when high_open); a sequence is checked item by
    item, and with `ordered` its items must not decrease."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    ordered: bool = False
    why: str = ""  # for an unbounded field: where it is checked instead

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_number(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {_number(self.high)}"
        else:
            text = f"any value ({self.why})" if self.why else "any value"
        return text + (", in increasing order" if self.ordered else "")

    def complaint(self, key: str, value: Any) -> str:
        return f"{key}={value!r} is out of range: it must be {self.describe()}"

    def admits(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            in_order = not self.ordered or all(a <= b for a, b in zip(value, value[1:]))
            return in_order and all(self.admits(v) for v in value)
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))


@dataclass(frozen=True)
class OneOf:
    """A string among `choices`, or matching `pattern` (e.g. cuda:<index>)."""

    choices: tuple[str, ...]
    pattern: str | None = None
    pattern_help: str = ""

    def describe(self) -> str:
        names = ", ".join(self.choices)
        return f"one of {names}" + (f" or {self.pattern_help}" if self.pattern else "")

    def complaint(self, key: str, value: Any) -> str:
        return f"{key}: unknown value {value!r}; choose {self.describe()}"

    def admits(self, value: Any) -> bool:
        return value in self.choices or (self.pattern is not None and isinstance(value, str)
                                         and re.fullmatch(self.pattern, value) is not None)


def _field(default: Any, default_factory: Any, metadata: dict) -> Any:
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounded(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, ordered: bool = False, per_run: bool = False,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its range: `ge`/`gt` the lower bound (inclusive/exclusive), `le`/`lt`
    the upper. `per_run`: the field also takes a percentage of the run's epochs, e.g. "10%"."""
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    check = Range(low, high, gt is not None, lt is not None, ordered)
    return _field(default, default_factory, {CHECK: check, PER_RUN: per_run})


def unbounded(default: Any = dataclasses.MISSING, *, why: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A numeric field without a range of its own; `why` says where it is checked instead."""
    return _field(default, default_factory, {CHECK: Range(why=why)})


def one_of(default: str, *choices: str, pattern: str | None = None, pattern_help: str = "") -> Any:
    """A string field limited to `choices` (and to strings matching `pattern`)."""
    return dataclasses.field(default=default, metadata={CHECK: OneOf(tuple(choices), pattern, pattern_help)})


def field_check(f: dataclasses.Field) -> Range | OneOf | None:
    return f.metadata.get(CHECK)


def takes_fraction_of_run(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(PER_RUN))


def is_finite(value: Any) -> bool:
    """False for inf, -inf and nan, also inside a list or tuple; True for anything else."""
    if isinstance(value, (list, tuple)):
        return all(is_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def first_problem(options: Any, key: str) -> str | None:
    """The complaint about the first field of dataclass instance `options` that its declaration
    refuses (None when all are admitted, or when `options` is no dataclass)."""
    if not dataclasses.is_dataclass(options):
        return None
    for f in dataclasses.fields(options):
        problem = check_value(f, getattr(options, f.name), f"{key}.{f.name}")
        if problem:
            return problem
    return None


def check_value(f: dataclasses.Field, value: Any, key: str) -> str | None:
    """None when `value` is admitted by the declaration of field `f`, else the one-line complaint.
    No field admits a non-finite number, whatever (or whether) it declares."""
    check = field_check(f)
    if not is_finite(value):
        what = check.describe() if isinstance(check, Range) and (check.low is not None or check.high is not None) else ""
        return f"{key}={value!r} is out of range: it must be a finite number" + (f" {what}" if what else "")
    if check is None or value is None or check.admits(value):
        return None
    return check.complaint(key, value)
