"""The dry run's estimate: epochs x the first epoch of each setting, read from the study's own run
folders where it trained one (a resumed run's clock restarted: not read)."""

from __future__ import annotations

import json
import textwrap

from mimreg.study.estimate import estimate, first_epoch_seconds
from mimreg.study.point import run_dir_of
from mimreg.study.spec import load_study

TINY = ("{data.name: synthetic, data.img_size: 32, model.arch: vit_micro, method.decoder_dim: 32, "
        "method.decoder_depth: 1, method.decoder_heads: 2, optim.warmup_epochs: 0, train.device: cpu}")


def write_metrics(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_first_epoch_is_read_from_a_run_that_was_not_resumed(tmp_path):
    write_metrics(tmp_path / "a", [{"kind": "start", "time": 0.5}, {"kind": "train", "step": 1, "time": 3.0},
                                   {"kind": "epoch", "step": 4, "time": 12.5}, {"kind": "epoch", "step": 8, "time": 20}])
    assert first_epoch_seconds(tmp_path / "a") == 12.0
    write_metrics(tmp_path / "b", [{"kind": "start", "time": 0.5}, {"kind": "start", "time": 0.1},
                                   {"kind": "epoch", "step": 4, "time": 2.0}])
    assert first_epoch_seconds(tmp_path / "b") is None  # resumed: its clock restarted
    assert first_epoch_seconds(tmp_path / "missing") is None


def test_points_that_differ_by_seed_or_axis_share_the_measured_epoch_and_multiply_their_epochs(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(f"set: {TINY}\n" + textwrap.dedent("""
        seeds: 2
        grids:
          - recipes: [digits/u-mae]
            axes: {regularizers.uniformity.weight: [0.1, 0.3]}
            set: {train.epochs: 3}
        """))
    study = load_study(path)
    measured = run_dir_of(tmp_path / "out", study.points[1])  # weight 0.1, seed 1
    write_metrics(measured, [{"kind": "start", "time": 0.0}, {"kind": "epoch", "step": 4, "time": 7.0}])
    lines = []
    total = estimate(study, tmp_path / "out", study.points, "cpu", echo=lines.append)
    assert total == 7.0 * 3 * 4  # 4 points of 3 epochs, none measured again
    assert lines == [f"  first epoch of {study.points[0].group} (and its axis values): 7.0 s (run folder)"]
