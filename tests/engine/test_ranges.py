"""Every numeric key declares its range on its dataclass field, and load_config checks it with
one line naming key, value and range."""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from mimreg.bounds import Range, field_check
from mimreg.cli import main
from mimreg.config import DataConfig, ModelConfig, OptimConfig, RegularizerConfig, TrainConfig, load_config
from mimreg.errors import ConfigError
from mimreg.methods import METHODS
from mimreg.regularizers import REGULARIZERS


def builtin(registry: dict) -> list[type]:
    """The Options of mimreg's own entries (a test may register a user's entry in the same process)."""
    return [cls.Options for cls in registry.values() if cls.__module__.startswith("mimreg.")]


DATACLASSES = [DataConfig, ModelConfig, RegularizerConfig, OptimConfig, TrainConfig,
               *builtin(METHODS), *builtin(REGULARIZERS)]


def is_numeric(hint) -> bool:
    if hint in (int, float):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType, list, tuple):
        return any(is_numeric(a) for a in args if a is not Ellipsis)
    return False


def numeric_fields():
    for cls in DATACLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if is_numeric(hints[f.name]):
                yield cls, f


def test_every_numeric_field_declares_a_range_its_default_satisfies():
    fields = list(numeric_fields())
    assert len(fields) > 60 and len(DATACLASSES) == 5 + 9 + 11  # sections, methods, regularizers
    for cls, f in fields:
        check = field_check(f)
        assert isinstance(check, Range), f"{cls.__name__}.{f.name} declares no range"
        assert check.low is not None or check.high is not None or check.why, f"{cls.__name__}.{f.name}"
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert default is None or check.admits(default), f"{cls.__name__}.{f.name}={default!r}"


# (overrides, recipe, message): the cases of issue 7 and more, each a single line naming the key
CASES = [
    ("optim.lr=-1", "mae", r"config\.optim\.lr=-1\.0 is out of range: it must be > 0"),
    ("optim.blr=0", "mae", r"config\.optim\.blr=0\.0 is out of range: it must be > 0"),
    ("method.mask_ratio=0", "mae", r"method\.mask_ratio=0\.0 is out of range: it must be in \(0, 1\)"),
    ("method.mask_ratio=-0.5", "mae", r"method\.mask_ratio=-0\.5 is out of range: it must be in \(0, 1\)"),
    ("method.mask_ratio=1", "mae", r"method\.mask_ratio=1\.0 is out of range: it must be in \(0, 1\)"),
    ("method.mask_ratio=1.5", "simmim", r"method\.mask_ratio=1\.5 is out of range"),
    ("optim.weight_decay=-1", "mae", r"config\.optim\.weight_decay=-1\.0 is out of range: it must be >= 0"),
    ("optim.warmup_epochs=-1", "mae", r"config\.optim\.warmup_epochs=-1\.0 is out of range: it must be >= 0"),
    ("train.ckpt_every_steps=-1", "mae", r"config\.train\.ckpt_every_steps=-1 is out of range: it must be >= 0"),
    ("train.halt_after_steps=0", "mae", r"config\.train\.halt_after_steps=0 is out of range: it must be >= 1"),
    ("model.patch_size=0", "mae", r"config\.model\.patch_size=0 is out of range: it must be >= 1"),
    ("model.drop_path=2", "mae", r"config\.model\.drop_path=2\.0 is out of range: it must be in \[0, 1\)"),
    ("optim.betas=[1.5,2]", "mae", r"config\.optim\.betas=\(1\.5, 2\.0\) is out of range: it must be in \[0, 1\)"),
    ("data.num_workers=-1", "mae", r"config\.data\.num_workers=-1 is out of range: it must be >= 0"),
    ("data.crop_scale=[0.9,0.2]", "mae", r"config\.data\.crop_scale=.* in \(0, 1\], in increasing order"),
    ("train.device=tpu", "mae", r"config\.train\.device: unknown value 'tpu'; choose one of auto, cpu, cuda, mps or cuda:<index>"),
    ("train.precision=fp8", "mae", r"config\.train\.precision: unknown value 'fp8'; choose one of fp32, bf16, fp16"),
    ("method.mask_mode=random", "mi-mae", r"method\.mask_mode: unknown value 'random'"),
    ("regularizers.magma.weight=-1", "m-mae", r"regularizers\.magma\.weight=-1\.0 is out of range: it must be >= 0"),
    ("regularizers.uniformity.eps=0", "u-mae", r"regularizers\.uniformity\.eps=0\.0 is out of range: it must be > 0"),
    ("regularizers.club.variance=std", "mi-mae", r"regularizers\.club\.variance: unknown value 'std'"),
    ("method.temperature=0", "simclr", r"method\.temperature=0\.0 is out of range: it must be > 0"),
    ("method.momentum=1.5", "byol", r"method\.momentum=1\.5 is out of range: it must be in \[0, 1\]"),
    # masks that leave no visible patch for this image and patch size (64 patches; 4 blocks of 4x4)
    ("method.mask_ratio=0.99", "mae", r"method\.mask_ratio=0\.99 leaves no visible patch of the 64 patches of a 32px image"),
    ("method.mask_unit=4 method.mask_ratio=0.8", "simmim", r"method\.mask_ratio=0\.8 leaves no visible patch of the 4 4x4-patch blocks"),
    ("method.num_masks=8", "mi-mae", r"method\.num_masks=8 disjoint masks of 16 visible patches need 128, the image has 64"),
    ("method.mask_unit=3", "simmim", r"method\.mask_unit=3 must divide the 8x8 patch grid"),
]


@pytest.mark.parametrize("overrides, recipe, message", CASES, ids=[c[0] for c in CASES])
def test_a_value_out_of_range_fails_at_load_in_one_line(overrides, recipe, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(recipe, overrides.split())
    assert "\n" not in str(info.value)


def test_a_set_value_that_is_not_yaml_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"--set data\.crop_scale=\[0\.9,: the value is not valid YAML"):
        load_config("mae", ["data.crop_scale=[0.9,"])


def test_a_refused_value_creates_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "mae", "--set", "optim.lr=-1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: config.optim.lr=-1.0 is out of range")
    assert not out.exists()


# ---------------------------------------------------------------- non-finite numbers (issue 14, section 7)
NON_FINITE = [
    ("optim.lr=.inf", r"config\.optim\.lr=inf is out of range: it must be a finite number > 0"),
    ("optim.blr=.inf", r"config\.optim\.blr=inf is out of range: it must be a finite number > 0"),
    ("optim.min_lr=.inf", r"config\.optim\.min_lr=inf is out of range: it must be a finite number >= 0"),
    ("optim.weight_decay=-.inf", r"config\.optim\.weight_decay=-inf is out of range: it must be a finite number"),
    ("optim.clip_grad=.nan", r"config\.optim\.clip_grad=nan is out of range: it must be a finite number > 0"),
    ("optim.lr=inf", r"config\.optim\.lr=inf is out of range"),  # the string YAML reads, coerced to a float
    ("optim.betas=[0.9,.nan]", r"config\.optim\.betas=\(0\.9, nan\) is out of range: it must be a finite number"),
    ("data.device_memory_gb=.inf", r"config\.data\.device_memory_gb=inf is out of range"),
    ("method.mask_ratio=.nan", r"method\.mask_ratio=nan is out of range"),
    ("regularizers.magma.weight=.inf", r"regularizers\.magma\.weight=inf is out of range: it must be a finite number >= 0"),
    ("regularizers.magma.gate_rec_loss=.inf", r"regularizers\.magma\.gate_rec_loss=inf is out of range"),
]


@pytest.mark.parametrize("override, message", NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_a_non_finite_number_fails_every_range(override, message):
    recipe = "m-mae" if override.startswith("regularizers.") else "mae"
    with pytest.raises(ConfigError, match=message) as info:
        load_config(recipe, [override])
    assert "\n" not in str(info.value)


def test_every_numeric_field_refuses_infinity_and_nan():
    """Whatever its declared range (also `unbounded` ones), no numeric field admits inf, -inf, nan."""
    from mimreg.bounds import check_value

    for cls, f in numeric_fields():
        for bad in (float("inf"), float("-inf"), float("nan")):
            assert check_value(f, bad, f.name), f"{cls.__name__}.{f.name} admits {bad}"


def test_an_infinite_lr_creates_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "mae", "--set", "optim.lr=.inf", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: config.optim.lr=inf is out of range")
    assert not out.exists()


# ---------------------------------------------------------------- keys checked together
@pytest.mark.parametrize("overrides, message", [
    (["optim.min_lr=1"], r"optim\.min_lr=1 is above the lr in force \(optim\.lr=0\.001\)"),
    (["optim.lr=null", "optim.blr=1e-3", "optim.min_lr=1e-3"],
     r"optim\.min_lr=0\.001 is above the lr in force \(optim\.blr=0\.001 x 128 \(batch\) x 1 \(accum\) x 1 \(world\) / 256 = 0\.0005\)"),
])
def test_min_lr_above_the_lr_in_force_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("mae", overrides)
    assert "\n" not in str(info.value)


def test_min_lr_up_to_the_lr_in_force_is_accepted(monkeypatch):
    assert load_config("mae", ["optim.min_lr=1e-3"]).optim.min_lr == 1e-3  # equal to optim.lr: a flat schedule
    blr = ["optim.lr=null", "optim.blr=1e-3", "optim.min_lr=1e-3"]  # 0.0005 in one process, 0.001 in two
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert load_config("mae", blr).optim.min_lr == 1e-3


def test_a_min_lr_above_the_lr_creates_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "mae", "--set", "optim.min_lr=1", "--out", str(out)]) == 2
    assert "optim.min_lr=1 is above the lr in force" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- a section is not nullable
@pytest.mark.parametrize("section", ["train", "optim", "data", "model", "method"])
def test_a_section_set_to_null_is_refused(section):
    with pytest.raises(ConfigError, match=rf"^{section}=null: a section cannot be null") as info:
        load_config("mae", [f"{section}=null"])
    assert "\n" not in str(info.value)


def test_a_section_left_empty_in_a_file_is_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: digits\nmethod:\n  name: mae\ntrain:\n")
    with pytest.raises(ConfigError, match=r"train=null: a section cannot be null"):
        load_config(path)


def test_min_lr_is_checked_for_the_world_the_run_will_have():
    blr = ["optim.lr=null", "optim.blr=1e-3", "optim.min_lr=1e-3"]  # 0.0005 x world
    assert load_config("mae", blr, world=2).optim.min_lr == 1e-3  # what `mimreg submit` passes for its job
    with pytest.raises(ConfigError, match=r"x 1 \(world\) / 256 = 0\.0005\)"):
        load_config("mae", blr, world=1)
