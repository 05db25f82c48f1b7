"""Config loading, overrides, validation errors and the dict/YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from mimreg.config import (Config, config_from_dict, config_to_dict, dump_config, load_config, preset_names,
                           recipe_names)
from mimreg.engine.build import build_trainee
from mimreg.errors import ConfigError
from mimreg.methods import METHODS
from mimreg.methods.mae import MAEOptions
from mimreg.regularizers.magma import MagmaOptions
from mimreg.regularizers.uniformity import UniformityOptions

pytestmark = pytest.mark.usefixtures("single_thread")


def test_recipe_and_preset_lists():
    assert set(recipe_names()) == set(EXPECTED)
    assert {"digits", "cifar10", "cifar10-cpu", "cifar100", "cifar100-cpu"} <= set(preset_names())


# recipe -> (method, regularizers)
EXPECTED = {
    "mae": ("mae", []), "u-mae": ("mae", ["uniformity"]), "m-mae": ("mae", ["magma"]),
    "mu-mae": ("mae", ["uniformity", "magma"]), "mi-mae": ("mae", ["infonce_masks", "club"]),
    "simmim": ("simmim", []), "u-simmim": ("simmim", ["uniformity"]), "mi-simmim": ("simmim", ["infonce_masks", "club"]),
    "msn": ("msn", []), "simclr": ("simclr", []), "m-simclr": ("simclr", ["magma"]), "vicreg": ("vicreg", []),
    "m-vicreg": ("vicreg", ["magma"]), "byol": ("byol", []), "barlow": ("barlow", []), "mse": ("mse", []),
    "mse+t-regs": ("mse", ["mst"]), "byol+t-regs": ("byol", ["mst"]), "barlow+t-regs": ("barlow", ["mst"]),
    "mae+coding-rate": ("mae", ["coding_rate"]), "simclr+coding-rate": ("simclr", ["coding_rate"]),
    "mae+visreg": ("mae", ["visreg"]),
    "mae+koleo": ("mae", ["koleo"]), "mae+vcreg": ("mae", ["vcreg"]), "simclr+koleo": ("simclr", ["koleo"]),
    "simclr+mmcr": ("simclr", ["mmcr"]), "simclr+vcreg": ("simclr", ["vcreg"]),
    "simclr+visreg": ("simclr", ["visreg"]), "lejepa+koleo": ("lejepa", ["koleo"]),
    "lejepa": ("lejepa", []), "simclr+sigreg": ("simclr", ["sigreg"]), "mae+sigreg": ("mae", ["sigreg"]),
}


@pytest.mark.parametrize("preset", preset_names())
@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_loads_on_every_preset(recipe, preset):
    method, regs = EXPECTED[recipe]
    if preset.endswith(("-r18", "-r50")) and not METHODS[method].accepts_resnet:  # T-REGS's ResNet presets
        with pytest.raises(ConfigError, match=f"method {method} needs a ViT encoder"):
            load_config(f"{preset}/{recipe}")
        return
    cfg = load_config(f"{preset}/{recipe}")
    assert cfg.recipe == f"{preset}/{recipe}"
    assert cfg.method.name == method
    if method == "mae":
        assert isinstance(cfg.method.options, MAEOptions)
        assert cfg.method.options.mask_ratio == 0.75
    assert [r.name for r in cfg.regularizers] == regs
    expected_data = {"digits": "digits", "cifar10": "cifar10", "cifar10-cpu": "cifar10",
                     "cifar100": "cifar100", "cifar100-cpu": "cifar100"}
    if preset in expected_data:
        assert cfg.data.name == expected_data[preset]
    for reg in cfg.regularizers:
        assert reg.weight is not None and reg.weight > 0


@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_composes(recipe):
    """Every regularizer of every recipe reads features its method produces (checked at build)."""
    trainee = build_trainee(load_config(f"digits/{recipe}"), num_classes=10)
    assert [r.name for r in trainee.regularizers] == EXPECTED[recipe][1]


def test_recipe_without_preset_uses_digits():
    cfg = load_config("u-mae")
    assert cfg.recipe == "digits/u-mae"
    assert cfg.data.name == "digits"
    assert cfg.method.options.decoder_dim == 96  # from the digits preset
    assert cfg.regularizers[0].options == UniformityOptions(feature="cls")
    assert cfg.regularizers[0].weight == 0.01
    assert [m.name for m in cfg.monitor] == ["magma"]


def test_preset_values_reach_the_config():
    cfg = load_config("cifar10-cpu/mae")
    assert (cfg.data.name, cfg.data.subset, cfg.data.num_workers) == ("cifar10", 20000, 1)
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.train.epochs) == (256, 1e-3, 12)
    cfg = load_config("cifar10/mae")
    assert (cfg.model.arch, cfg.train.precision, cfg.optim.warmup_epochs) == ("vit_tiny", "bf16", 40.0)


@pytest.mark.parametrize("preset, start, duration", [("digits", 2, 10), ("cifar10-cpu", 1, 6), ("cifar10", 10, 100)])
def test_regularizer_defaults_fill_the_magma_window(preset, start, duration):
    for recipe in ("m-mae", "mu-mae"):
        magma = next(r for r in load_config(f"{preset}/{recipe}").regularizers if r.name == "magma")
        assert (magma.start_epoch, magma.duration) == (start, duration)
        assert magma.weight == 1.0
        assert magma.options == MagmaOptions(reference_blocks=[-2], regularized_block=-1)
    # regularizer_defaults do not apply to a regularizer that has no window (uniformity)
    uni = next(r for r in load_config(f"{preset}/mu-mae").regularizers if r.name == "uniformity")
    assert (uni.start_epoch, uni.duration) == (0, None)


def test_explicit_window_wins_over_regularizer_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "digits", "method": {"name": "mae"}, "regularizers": [
        {"name": "magma", "start_epoch": 5}]}))
    magma = load_config(path).regularizers[0]
    assert (magma.start_epoch, magma.duration) == (5, 10)


def test_set_overrides():
    cfg = load_config("mu-mae", ["optim.blr=1e-3", "optim.lr=null", "regularizers.magma.weight=2",
                                 "regularizers.0.feature=mean", "train.epochs=3", "data.crop_scale=[0.5, 1.0]"])
    assert cfg.optim.blr == 1e-3 and isinstance(cfg.optim.blr, float)  # YAML reads 1e-3 as a string
    assert cfg.optim.lr is None
    regs = {r.name: r for r in cfg.regularizers}
    assert regs["magma"].weight == 2.0
    assert regs["uniformity"].weight == 0.01  # untouched
    assert regs["uniformity"].options.feature == "mean"
    # the preset's window still applies, as percentages of the 3 epochs: 10% -> 0, 50% -> 2 (half up)
    assert (regs["magma"].start_epoch, regs["magma"].duration) == (0, 2)
    assert cfg.train.epochs == 3
    assert cfg.data.crop_scale == (0.5, 1.0)


def test_set_replaces_whole_lists():
    assert load_config("mu-mae", ["regularizers=[]"]).regularizers == []
    assert load_config("mae", ["monitor=[]"]).monitor == []
    cfg = load_config("mae", ["regularizers=[{name: magma, weight: 0.5, start_epoch: 3, duration: 4}]"])
    assert [(r.name, r.weight, r.start_epoch, r.duration) for r in cfg.regularizers] == [("magma", 0.5, 3, 4)]


def test_regularizer_added_by_set_gets_the_preset_window():
    added = load_config("mae", ["regularizers=[{name: magma}]"]).regularizers[0]
    from_recipe = load_config("m-mae").regularizers[0]
    assert (added.start_epoch, added.duration) == (from_recipe.start_epoch, from_recipe.duration) == (2, 10)


def test_set_on_missing_list_entry_names_it():
    with pytest.raises(ConfigError, match="no entry 'magma'.*uniformity"):
        load_config("u-mae", ["regularizers.magma.weight=2"])


def test_set_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("mae", ["optim.blr"])


def test_set_into_a_scalar():
    with pytest.raises(ConfigError, match=r"optim\.lr is not a section"):
        load_config("mae", ["optim.lr.x=1"])


@pytest.mark.parametrize("override, pattern", [
    ("foo=1", r"unknown key 'foo'"),
    ("optim.bacth_size=64", r"config\.optim: unknown key 'bacth_size'.*did you mean 'batch_size'"),
    ("train.epoch=2", r"unknown key 'epoch'.*did you mean 'epochs'"),
    ("optim.blr=abc", r"optim\.blr: expected a number, got 'abc'"),
    ("optim.batch_size=12.5", r"optim\.batch_size: expected an integer"),
    ("train.progress=maybe", r"train\.progress: expected true or false"),
    ("optim.betas=[0.9]", r"optim\.betas: expected 2 values"),
    ("data.name=nope", r"data\.name: unknown value 'nope'"),
    ("model.arch=vit_huge", r"model\.arch: unknown value 'vit_huge'"),
    ("train.precision=fp8", r"train\.precision: unknown value 'fp8'"),
    ("train.epochs=0", r"train\.epochs=0 is out of range: it must be >= 1"),
    ("data.subset=0", r"data\.subset"),
    ("regularizers=[{name: magmaa}]", r"regularizers\[0\]: unknown name 'magmaa'.*did you mean 'magma'"),
    ("regularizers=[{weight: 1}]", r"regularizers\[0\] needs a `name`"),
    ("regularizers=[{name: magma, wieght: 2}]", r"regularizers\[0\] \(magma\): unknown key 'wieght'.*did you mean 'weight'"),
    ("regularizers=[{name: magma, start_epoch: -1}]", r"regularizers\.magma\.start_epoch=-1 is out of range: it must be >= 0"),
    ("regularizers=[magma, magma]", r"'magma' is listed twice"),
    ("regularizers={name: magma}", r"regularizers must be a list"),
    ("monitor=[nope]", r"monitor\[0\]: unknown name 'nope'"),
    ("method.mask_ratioo=0.5", r"method \(mae\): unknown key 'mask_ratioo'.*did you mean 'mask_ratio'"),
    ("method.name=beit", r"method: unknown name 'beit'"),
    ("method.mask_ratio=high", r"mask_ratio: expected a number"),
])
def test_bad_values_raise_config_error_naming_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("u-mae", [override])


def test_batch_of_one_with_a_batch_wide_regularizer():
    with pytest.raises(ConfigError, match=r"optim\.batch_size >= 2.*got 1") as info:
        load_config("u-mae", ["optim.batch_size=1"])
    assert "uniformity" in str(info.value)
    assert load_config("u-mae", ["optim.batch_size=1", "regularizers=[]", "monitor=[]"]).optim.batch_size == 1
    with pytest.raises(ConfigError, match="magma"):  # monitored batch-wide losses need 2 samples too
        load_config("u-mae", ["optim.batch_size=1", "regularizers=[]"])


def test_unknown_recipe_and_preset():
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*u-mae"):
        load_config("nope")
    with pytest.raises(ConfigError, match=r"unknown preset 'imagenet'.*cifar10"):
        load_config("imagenet/mae")


def test_yaml_file_with_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "preset": "cifar10-cpu",
        "description": "mine",
        "method": {"name": "mae", "mask_ratio": 0.6},
        "regularizers": [{"name": "magma", "weight": 0.5}],
        "optim": {"batch_size": 64},
    }))
    cfg = load_config(path, ["train.epochs=2"])
    assert cfg.recipe == "custom" and cfg.description == "mine"
    assert (cfg.data.name, cfg.data.subset) == ("cifar10", 20000)  # from the preset
    assert cfg.method.options.mask_ratio == 0.6
    assert cfg.method.options.decoder_dim == 96  # preset's method keys merge with the file's
    assert (cfg.optim.batch_size, cfg.optim.lr) == (64, 1e-3)
    assert cfg.train.epochs == 2
    magma = cfg.regularizers[0]
    assert (magma.weight, magma.start_epoch, magma.duration) == (0.5, 1, 1)  # 50% of the 2 epochs


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)
    unknown_preset = tmp_path / "preset.yaml"
    unknown_preset.write_text("preset: nope\n")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config(unknown_preset)


@pytest.mark.parametrize("recipe", ["mae", "u-mae", "m-mae", "mu-mae", "cifar10/mu-mae"])
def test_dict_round_trip(recipe, tmp_path):
    cfg = load_config(recipe, ["regularizers.0.weight=0.25"] if recipe != "mae" else [])
    raw = config_to_dict(cfg)
    again = config_from_dict(raw)
    assert again == cfg
    assert isinstance(again, Config)
    # the flat form is plain YAML, and a dumped config.yaml loads back to the same config
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text()) == raw


def test_config_to_dict_is_flat():
    raw = config_to_dict(load_config("mu-mae"))
    assert raw["method"]["name"] == "mae" and raw["method"]["mask_ratio"] == 0.75
    assert "options" not in raw["method"]
    assert raw["regularizers"][1]["name"] == "magma"
    assert raw["regularizers"][1]["reference_blocks"] == [-2]
    assert raw["data"]["crop_scale"] == [0.2, 1.0]


def test_regularizer_reading_a_missing_feature_fails_at_build(tiny_config):
    cfg = tiny_config("mae", "regularizers=[{name: uniformity, feature: nope}]")
    with pytest.raises(ConfigError, match=r"'uniformity' reads feature\(s\) \['nope'\].*'mae'"):
        build_trainee(cfg)
    cfg = tiny_config("mae", "monitor=[{name: uniformity, feature: block.9}]")
    with pytest.raises(ConfigError, match=r"block\.9"):
        build_trainee(cfg)


def test_magma_block_out_of_range_fails_at_build(tiny_config):
    cfg = tiny_config("mae", "regularizers=[{name: magma, regularized_block: 6}]")
    with pytest.raises(ConfigError, match="out of range"):
        build_trainee(cfg)


@pytest.mark.parametrize("recipe", ["mae", "u-mae", "m-mae", "mu-mae"])
def test_every_recipe_builds(tiny_config, recipe):
    trainee = build_trainee(tiny_config(recipe), num_classes=10)
    cfg = tiny_config(recipe)
    assert [r.name for r in trainee.regularizers] == [r.name for r in cfg.regularizers]
    assert [m.name for m in trainee.monitors] == [m.name for m in cfg.monitor]
    assert trainee.probe is not None and trainee.probe.out_features == 10
    assert trainee.method.decoder.embed.out_features == 32


def test_each_method_checks_its_own_mask_geometry_at_load():
    """The method's check_options is the one place that knows its mask geometry; load_config asks it."""
    from mimreg.methods import MAE, MSN, SimMIM

    with pytest.raises(ConfigError, match=r"method\.mask_ratio=0\.99 leaves no visible patch of the 64 patches"):
        load_config("msn", ["method.mask_ratio=0.99", "data.name=synthetic"])
    with pytest.raises(ConfigError, match=r"method\.num_masks=5 disjoint masks of 16 visible patches need 80"):
        MAE.check_options(MAEOptions(num_masks=5), 32, 4)
    MAE.check_options(MAEOptions(num_masks=5, mask_mode="independent"), 32, 4)  # views may overlap
    with pytest.raises(ConfigError, match=r"method\.mask_unit=3 must divide the 8x8 patch grid"):
        SimMIM.check_options(SimMIM.Options(mask_unit=3), 32, 4)
    MSN.check_options(MSN.Options(mask_ratio=0.7), 32, 4)
