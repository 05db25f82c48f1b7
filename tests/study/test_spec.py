"""A study file is expanded into its grid, and refused at load, in one line naming the problem,
before anything runs."""

from __future__ import annotations

import textwrap

import pytest

from mimreg.cli import main
from mimreg.errors import ConfigError
from mimreg.study.spec import load_study

TINY = ("{data.name: synthetic, data.img_size: 32, model.arch: vit_micro, method.decoder_dim: 32, "
        "method.decoder_depth: 1, method.decoder_heads: 2, optim.batch_size: 16, data.subset: 32, "
        "train.epochs: 2, optim.warmup_epochs: 0, train.progress: false, train.device: cpu}")


def write(tmp_path, text: str, name: str = "study.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_grid_is_recipes_x_axes_x_seeds_and_a_shared_point_runs_once(tmp_path):
    path = write(tmp_path, f"""
        set: {TINY}
        seeds: 3
        grids:
          - recipes: [digits/mae, digits/u-mae]
          - recipes: [digits/u-mae]
            axes: {{regularizers.uniformity.weight: [0.01, 0.1], optim.lr: [0.001, 0.01]}}
            seeds: [0, 1]
        evaluations:
          - {{protocols: [linear, knn], pools: [cls, mean], train_images: 100}}
          - {{protocol: analyze, pictures: [spectrum]}}
        """)
    study = load_study(path)
    names = [p.name for p in study.points]
    assert len(names) == 2 * 3 + 4 * 2 == len(set(names))
    assert "digits-u-mae_uniformity.weight=0.1_lr=0.01_seed1" in names
    point = next(p for p in study.points if p.name == "digits-u-mae_uniformity.weight=0.1_lr=0.01_seed1")
    assert point.overrides[-3:] == ("regularizers.uniformity.weight=0.1", "optim.lr=0.01", "train.seed=1")
    assert point.group == "digits-u-mae_uniformity.weight=0.1_lr=0.01"
    assert [e.protocol for e in study.evaluations] == ["linear+knn", "analyze"]
    # the same point listed twice (here: u-mae at its defaults, seed 0, in two grids) runs once
    again = write(tmp_path, f"""
        set: {TINY}
        grids: [{{recipes: [digits/u-mae]}}, {{recipes: [digits/u-mae, digits/mae]}}]
        """, "again.yaml")
    assert [p.name for p in load_study(again).points] == ["digits-u-mae_seed0", "digits-mae_seed0"]


@pytest.mark.parametrize("body, message", [
    ("recipes: [digits/mae]\nseed: 3", r"study file .*: unknown key 'seed'; known keys: \[.*'seeds'"),
    ("recipes: [digits/mae]\naxes: {optim.nonsense: [1, 2]}",
     r"study point digits-mae_nonsense=1_seed0 .*unknown key 'nonsense'"),
    ("recipes: [digits/u-mae]\naxes: {regularizers.uniformity.weight: [0.1, -1]}",
     r"study point digits-u-mae_uniformity.weight=-1_seed0 .*weight=-1.0 is out of range: it must be >= 0"),
    ("recipes: [digits/mae, digits/u-mae]\naxes: {regularizers.uniformity.weight: [0.1]}",
     r"study point digits-mae_uniformity.weight=0.1_seed0 \(digits/mae .*no entry 'uniformity' in this list"),
    ("recipes: [digits/mae]\naxes: {optim.lr: 0.1}", r"grids\[0\].axes.optim.lr: an axis is a non-empty list"),
    ("recipes: [digits/mae]\nseeds: [1, 1]", r"seeds=\[1, 1\]: give a count .* distinct seeds"),
    ("recipes: [digits/mae]\nevaluations: [{protocol: linearr}]", r"evaluations\[0\]: unknown protocol \['linearr'\]"),
    ("recipes: [digits/mae]\nevaluations: [{protocol: knn, pools: [cls, avg]}]", r"unknown pool \['avg'\]"),
    ("recipes: [digits/mae]\nevaluations: [{protocol: knn, train_images: 0}]", r"train_images=0: give a whole"),
    ("recipes: [digits/mae]\nevaluations: [{protocol: finetune, settings: {epoch: 3}}]",
     r"evaluations\[0\].settings: unknown key 'epoch'"),
    ("recipes: [digits/mae]\nevaluations: [{protocols: [knn, finetune]}]", r"finetune is an evaluation of its own"),
    ("recipes: [digits/mae]\nrun: {parallel: 0}", r"run.parallel=0"),
    ("recipes: [nonexistent-recipe]", r"study point nonexistent-recipe_seed0 .*nonexistent-recipe"),
])
def test_a_bad_study_file_is_refused_at_load_naming_the_problem(tmp_path, body, message):
    path = write(tmp_path, f"set: {TINY}\n{body}\n")
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_the_command_refuses_a_bad_file_in_one_line_and_runs_nothing(tmp_path, capsys):
    path = write(tmp_path, f"set: {TINY}\nrecipes: [digits/mae]\naxes: {{optim.lr: [0.001, -1]}}\n")
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: study point digits-mae_lr=-1_seed0")
    assert not (tmp_path / "out").exists()


def test_a_command_set_goes_into_every_point_and_may_not_change_what_a_grid_varies(tmp_path):
    path = write(tmp_path, f"""
        set: {TINY}
        grids:
          - recipes: [digits/mae]
          - recipes: [digits/u-mae]
            axes: {{regularizers.uniformity.weight: [0.1]}}
        """)
    study = load_study(path, extra=["optim.lr=0.002"])
    assert all(p.overrides[-1] == "optim.lr=0.002" for p in study.points)
    assert [p.name for p in study.points] == [p.name for p in load_study(path).points]  # names keep to the file
    with pytest.raises(ConfigError, match=r"--set regularizers.uniformity.weight=1: grids\[1\] sets "
                                          r"regularizers.uniformity.weight itself"):
        load_study(path, extra=["regularizers.uniformity.weight=1"])


def test_a_rerun_with_other_settings_is_refused_for_the_points_already_run(tmp_path):
    from mimreg.study.ledger import PointStatus, write_status
    from mimreg.study.run import pending_points

    path = write(tmp_path, f"set: {TINY}\nrecipes: [digits/mae]\n")
    study = load_study(path)
    point = study.points[0]
    write_status(tmp_path / "out", point.name, PointStatus(state="done", pretrained=True,
                                                           overrides=list(point.overrides)))
    assert pending_points(study, tmp_path / "out") == ([], [point])
    changed = load_study(path, extra=["optim.lr=0.002"])
    with pytest.raises(ConfigError, match=rf"study point {point.name} ran in .* with \[.*\]; this study gives it "
                                          r"\[.*'optim.lr=0.002'\]: give the same settings \(--set\), or a new --out"):
        pending_points(changed, tmp_path / "out")
