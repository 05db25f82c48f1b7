"""Alternative keys (optim.lr / optim.blr, a regularizer's window / gate): the latest layer's
choice is in force, one layer setting two is refused, and what is in force is stated."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from mimreg.config import (OptimConfig, RegularizerConfig, config_from_dict, config_to_dict, dump_config,
                           load_config)
from mimreg.engine.run_info import start_facts, start_line, token_grid
from mimreg.engine.schedule import learning_rate, lr_hint, lr_key, lr_source
from mimreg.errors import ConfigError


def test_set_blr_replaces_the_presets_lr():
    cfg = load_config("mae", ["optim.blr=0.01"])  # the digits preset sets lr: 1e-3
    assert (cfg.optim.blr, cfg.optim.lr) == (0.01, None)
    assert learning_rate(cfg.optim, world=1) == pytest.approx(0.01 * 128 / 256)
    assert lr_key(cfg.optim) == "optim.blr"


def test_set_lr_replaces_the_recipes_blr(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"preset": "digits", "method": {"name": "mae"}, "optim": {"blr": 1e-3}}))
    mine = load_config(path)
    assert (mine.optim.blr, mine.optim.lr) == (1e-3, None)  # the user's file over the preset
    later = load_config(path, ["optim.lr=2e-3"])
    assert (later.optim.blr, later.optim.lr) == (None, 2e-3)  # --set over the user's file


def test_no_choice_keeps_the_default_rule():
    cfg = load_config("mae", ["optim.lr=null"])
    assert (cfg.optim.blr, cfg.optim.lr) == (OptimConfig.blr, None)


@pytest.mark.parametrize("sets", [["optim.lr=1e-3", "optim.blr=1e-3"], ["optim={lr: 1.0e-3, blr: 1.0e-3}"]])
def test_one_layer_setting_both_is_refused(sets):
    with pytest.raises(ConfigError, match=r"optim: blr=.* and lr=.* are alternatives") as info:
        load_config("mae", sets)
    assert "\n" not in str(info.value)


def test_a_file_setting_both_is_refused(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"method": {"name": "mae"}, "optim": {"lr": 1e-3, "blr": 1e-3}}))
    with pytest.raises(ConfigError, match=rf"{path.name}: optim: .*alternatives"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"config\.optim: .*alternatives"):
        config_from_dict({"optim": {"lr": 1e-3, "blr": 1e-3}})


def test_config_yaml_holds_only_the_key_in_force(tmp_path):
    path = tmp_path / "config.yaml"
    for sets, in_force in ((["optim.blr=0.01"], "blr"), ([], "lr")):
        cfg = load_config("mae", sets)
        dump_config(cfg, path, notes=[start_line(cfg, 1)])
        optim = yaml.safe_load(path.read_text())["optim"]
        assert [k for k in ("lr", "blr") if optim[k] is not None] == [in_force]
        assert path.read_text().startswith(f"# lr: optim.{in_force}=")
        assert load_config(path) == cfg


def test_gate_replaces_the_presets_window(tmp_path):
    regs = {r.name: r for r in load_config("mi-mae", ["regularizers.club.gate_rec_loss=0.5"]).regularizers}
    assert (regs["club"].gate_rec_loss, regs["club"].start_epoch, regs["club"].duration) == (0.5, None, None)
    assert (regs["infonce_masks"].start_epoch, regs["infonce_masks"].gate_rec_loss) == (2, None)
    with pytest.raises(ConfigError, match=r"start_epoch=3 and gate_rec_loss=0\.5 are alternatives"):
        load_config("mae", ["regularizers=[{name: magma, start_epoch: 3, gate_rec_loss: 0.5}]"])
    with pytest.raises(ConfigError, match=r"--set regularizers\.club: .*alternatives"):
        load_config("mi-mae", ["regularizers.club.gate_rec_loss=0.5", "regularizers.club.start_epoch=1"])
    # a window given by --set replaces the gate of the user's file
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump({"preset": "digits", "method": {"name": "mae"},
                                    "regularizers": [{"name": "magma", "gate_rec_loss": 0.5}]}))
    magma = load_config(path, ["regularizers.magma.start_epoch=1"]).regularizers[0]
    assert (magma.start_epoch, magma.duration, magma.gate_rec_loss) == (1, 10, None)


def test_every_alternative_group_has_one_default_in_force():
    for cls in (OptimConfig, RegularizerConfig):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        first, *others = cls.alternatives
        assert any(defaults[k] is not None for k in first)
        assert all(defaults[k] is None for group in others for k in group)


def test_what_the_run_states_about_its_lr():
    blr = OptimConfig(blr=1e-3, lr=None, batch_size=128, accum_steps=1)
    assert lr_source(blr, 1) == "optim.blr=0.001 x 128 (batch) x 1 (accum) x 1 (world) / 256 = 0.0005"
    assert lr_source(OptimConfig(blr=None, lr=1e-3), 4) == "optim.lr=0.001"
    assert lr_hint(OptimConfig(blr=None, lr=1e-3)) == "a lower optim.lr (now 0.001)"
    assert lr_hint(blr) == "a lower optim.blr (now 0.001)"
    cfg = load_config("mae", ["optim.blr=1e-3", "optim.accum_steps=2"])
    facts = start_facts(cfg, world=2)
    assert facts["lr"] == pytest.approx(1e-3 * 128 * 2 * 2 / 256) and facts["lr_key"] == "optim.blr"
    assert (facts["img_size"], facts["patch_grid"], facts["tokens"]) == (32, [8, 8], 64)
    assert start_line(cfg, 2) == ("lr: optim.blr=0.001 x 128 (batch) x 2 (accum) x 2 (world) / 256 = 0.002; "
                                  "images 32x32 px, patch 4: 8x8 = 64 tokens")
    assert token_grid(load_config("mae", ["model.patch_size=8"])).tokens == 16


def test_round_trip_of_the_flat_form_keeps_the_choice():
    raw = config_to_dict(load_config("mae", ["optim.blr=0.01"]))
    assert (raw["optim"]["blr"], raw["optim"]["lr"]) == (0.01, None)
    assert config_from_dict(raw).optim == load_config("mae", ["optim.blr=0.01"]).optim


def test_nulling_the_side_in_force_brings_back_the_default_side(tmp_path):
    """A later layer that nulls the only side an earlier layer set leaves the default rule in
    force (it used to leave both null: a TypeError at the first step, or at load)."""
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump({"preset": "digits", "method": {"name": "mae"}, "optim": {"lr": 2e-3}}))
    cfg = load_config(path, ["optim.lr=null"])
    assert (cfg.optim.blr, cfg.optim.lr) == (OptimConfig.blr, None)
    assert learning_rate(cfg.optim, world=1) == pytest.approx(OptimConfig.blr * 128 / 256)
    magma = load_config("m-mae", ["regularizers.magma.start_epoch=null"]).regularizers[0]
    assert (magma.start_epoch, magma.gate_rec_loss) == (0, None)
