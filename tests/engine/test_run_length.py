"""Schedules that follow the run length: windows and warm-up as percentages of train.epochs,
resolved to epochs at load; a window outside the run or a warm-up as long as it is an error."""

from __future__ import annotations

import pytest
import yaml

from mimreg.config import config_from_dict, dump_config, load_config
from mimreg.errors import ConfigError


def window(cfg, name: str = "magma") -> tuple[int, int | None]:
    reg = next(r for r in cfg.regularizers if r.name == name)
    return reg.start_epoch, reg.duration


def test_a_shorter_run_keeps_magma_inside_it():
    cfg = load_config("mu-mae", ["train.epochs=2"])  # the digits preset: 10% / 50% / warm-up 10%
    assert window(cfg) == (0, 1)
    assert cfg.optim.warmup_epochs == pytest.approx(0.2)


@pytest.mark.parametrize("epochs, magma, warmup", [(20, (2, 10), 2.0), (40, (4, 20), 4.0), (5, (1, 3), 0.5)])
def test_the_digits_schedule_scales_with_the_run(epochs, magma, warmup):
    cfg = load_config("m-mae", [f"train.epochs={epochs}"])
    assert window(cfg) == magma  # at 20 epochs: on during epochs 2-11, as before
    assert cfg.optim.warmup_epochs == pytest.approx(warmup)
    assert window(load_config("mi-mae", [f"train.epochs={epochs}"]), "club") == (magma[0], None)


def test_percentages_from_set_and_files(tmp_path):
    cfg = load_config("m-mae", ["train.epochs=8", "regularizers.magma.start_epoch=25%",
                                "regularizers.magma.duration=50%", "optim.warmup_epochs=12.5%"])
    assert window(cfg) == (2, 4) and cfg.optim.warmup_epochs == 1.0
    path = tmp_path / "mine.yaml"
    path.write_text("preset: digits\nmethod: {name: mae}\ntrain: {epochs: 10}\n"
                    "regularizers: [{name: magma, start_epoch: 30%}]\n")
    assert window(load_config(path)) == (3, 5)  # the preset's 50% duration fills the rest


def test_config_yaml_holds_epochs_and_loads_back_equal(tmp_path):
    cfg = load_config("mu-mae", ["train.epochs=6"])
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    raw = yaml.safe_load(path.read_text())
    assert raw["optim"]["warmup_epochs"] == pytest.approx(0.6)
    assert [(r["start_epoch"], r["duration"]) for r in raw["regularizers"]] == [(0, None), (1, 3)]
    assert load_config(path) == cfg == load_config("mu-mae", ["train.epochs=6"])  # --resume compares equal


def test_a_window_of_percentages_never_ends_after_the_run():
    cfg = load_config("m-mae", ["train.epochs=3", "regularizers.magma.start_epoch=50%",
                                "regularizers.magma.duration=50%"])
    assert window(cfg) == (2, 1)  # 1.5 -> 2 (half up); the end is kept at the run's last epoch
    assert window(load_config("m-mae", ["train.epochs=1"])) == (0, 1)  # at least one epoch


@pytest.mark.parametrize("sets, pattern", [
    (["train.epochs=3", "regularizers.magma.start_epoch=3"],
     r"regularizers\.magma\.start_epoch=3 is not inside the run \(train\.epochs=3\)"),
    (["train.epochs=3", "regularizers.magma.start_epoch=1", "regularizers.magma.duration=5"],
     r"regularizers\.magma: the window start_epoch=1, duration=5 ends after the run \(train\.epochs=3\); "
     r"set duration <= 2"),
    (["train.epochs=2", "optim.warmup_epochs=2"], r"optim\.warmup_epochs=2 is as long as the run \(train\.epochs=2\)"),
    (["train.epochs=2", "optim.warmup_epochs=100%"], r"optim\.warmup_epochs=2 is as long as the run"),
    (["regularizers.magma.start_epoch=120%"], r"regularizers\.magma\.start_epoch='120%': a percentage .* between 0% and 100%"),
    (["optim.warmup_epochs=ten%"], r"optim\.warmup_epochs='ten%': a percentage"),
    (["regularizers.magma.duration=soon"], r"regularizers\.magma\.duration: expected an integer, got 'soon'"),
    (["monitor=[{name: uniformity, start_epoch: 2}]"], r"monitor\[0\] \(uniformity\): start_epoch has no effect on a monitor"),
])
def test_schedules_outside_the_run_are_refused_naming_the_key(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("m-mae", sets)


def test_a_gated_regularizer_has_no_window_to_check():
    cfg = load_config("mi-mae", ["train.epochs=1", "regularizers.club.gate_rec_loss=0.5",
                                 "regularizers.infonce_masks.gate_rec_loss=0.5"])
    assert [r.gate_rec_loss for r in cfg.regularizers] == [0.5, 0.5]


def test_paper_scale_windows_stay_in_epochs():
    assert window(load_config("cifar10/m-mae")) == (10, 100)  # MAGMA's own ImageNet-100 window
    with pytest.raises(ConfigError, match=r"regularizers\.magma: the window start_epoch=10, duration=100 ends after"):
        load_config("cifar10/m-mae", ["train.epochs=50", "optim.warmup_epochs=5"])
    assert window(load_config("cifar10-cpu/m-mae", ["train.epochs=24"])) == (1, 12)  # after the warm-up epoch


def test_a_config_stored_before_these_checks_loads_as_that_run_ran():
    from mimreg.config import config_from_stored, config_to_dict

    raw = config_to_dict(load_config("mu-mae", ["train.epochs=3"]))
    raw["optim"].update(lr=1e-3, blr=0.01, warmup_epochs=4)  # the old rule: lr in force
    raw["monitor"] = [{"name": "magma", "start_epoch": 2, "duration": 10, "weight": None}]
    raw["regularizers"][1].update(start_epoch=1, duration=10)  # on from epoch 1 to the end
    with pytest.raises(ConfigError):
        config_from_dict(raw)
    cfg = config_from_stored(raw)
    assert (cfg.optim.lr, cfg.optim.blr, cfg.optim.warmup_epochs) == (1e-3, None, 4.0)
    assert (cfg.regularizers[1].start_epoch, cfg.regularizers[1].duration) == (1, 10)
    assert [(m.name, m.start_epoch, m.duration) for m in cfg.monitor] == [("magma", 0, None)]
    assert config_from_stored(config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"optim\.lr=-1"):  # ranges still hold
        config_from_stored({**raw, "optim": {"lr": -1}})


@pytest.mark.parametrize("images,batch,world,accum", [(50_000, 256, 1, 1), (1_281_167, 128, 8, 1), (1000, 7, 3, 4),
                                                      (126_689, 64, 2, 2)])
def test_step_counts_are_the_batches_the_loader_cuts(images, batch, world, accum):
    """step_counts (the loop's, and the papers presets' checks') against EpochBatches' micro-steps."""
    from mimreg.engine.data import EpochBatches
    from mimreg.run_length import step_counts

    per_epoch, warmup, total = step_counts(images, batch, world, accum, epochs=3, warmup_epochs=1.5)
    batches = EpochBatches(images, batch, world, rank=0, seed=0, accum=accum)
    assert per_epoch == batches.steps // accum == len(batches.for_epoch(0)) // accum
    assert (warmup, total) == (round(1.5 * per_epoch), 3 * per_epoch)
