"""Training curves: every logged key, integer epoch ticks, log axes for decades, visible overlaps."""

import json

import pytest

from mimreg.analysis.curves import curve_keys, curves_figure, plot_curves, plot_run_curves, series_of, wants_log
from mimreg.engine.metrics import read_metrics
from mimreg.errors import MimregError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def panels(figure):
    return {ax.get_title(): ax for ax in figure.axes if ax.get_title()}


def test_every_logged_key_of_a_run_gets_a_panel_against_epochs(tiny_run_dir):
    records = read_metrics(tiny_run_dir / "metrics.jsonl")
    lines = [json.loads(line) for line in (tiny_run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in lines if r["kind"] in ("train", "epoch", "knn") for k in r} - {"kind", "step", "epoch", "time"}
    assert {"loss", "rec", "lr", "reg/uniformity", "weight/uniformity", "monitor/magma", "probe/acc", "knn/top1"} <= logged
    figure = curves_figure({"u-mae": records})
    shown = panels(figure)
    assert set(shown) == logged and list(shown) == curve_keys(records)
    assert list(shown)[:2] == ["loss", "rec"]  # the method's terms first
    # x: epochs done (3 epochs of 8 steps, logged every 2 steps -> 0.25 ... 3.0), ticks at whole epochs
    xs, ys = series_of(records, "rec")
    assert xs == [s / 8 for s in range(2, 25, 2)] and len(ys) == 12
    rec = shown["rec"]
    line = rec.get_lines()[0]
    assert list(line.get_xdata()) == xs and line.get_marker() not in (None, "None", "")
    figure.canvas.draw()
    ticks = [t for t in rec.get_xticks() if rec.get_xlim()[0] <= t <= rec.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_runs_side_by_side_stay_visible_where_they_coincide(tiny_run_dir, tmp_path):
    records = read_metrics(tiny_run_dir / "metrics.jsonl")
    figure = curves_figure({"mae": records, "u-mae": records}, keys=["rec", "lr"])
    first, second = panels(figure)["rec"].get_lines()
    assert list(first.get_ydata()) == list(second.get_ydata())  # the same values...
    assert (first.get_linestyle(), first.get_marker()) != (second.get_linestyle(), second.get_marker())
    assert first.get_linewidth() > second.get_linewidth() and first.get_markersize() > second.get_markersize()
    assert first.get_markerfacecolor() == "none"  # ...drawn so that the one below shows through
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["mae", "u-mae"]
    path = plot_run_curves({"u-mae": records}, tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_one_epoch_shows_every_logged_point():
    records = [{"kind": "start", "steps_per_epoch": 14, "images": 1797},
               {"kind": "train", "step": 10, "epoch": 0, "rec": 1.0},
               {"kind": "train", "step": 14, "epoch": 0, "rec": 0.9},
               {"kind": "epoch", "step": 14, "epoch": 0, "rec": 0.95, "knn/top1": 40.0}]
    assert curve_keys(records) == ["rec", "knn/top1"]  # start-record fields are no curves
    shown = panels(curves_figure({"run": records}))
    assert list(shown["rec"].get_lines()[0].get_xdata()) == [10 / 14, 1.0]
    assert list(shown["knn/top1"].get_lines()[0].get_xdata()) == [1.0]  # logged at epoch end only


def test_log_axis_where_values_span_decades():
    assert wants_log([10.0, 1.0, 0.05]) and not wants_log([1.0, 0.5]) and not wants_log([1.0, 0.0, 100.0])
    records = [{"kind": "train", "step": s, "loss": 10.0 ** -s, "probe/acc": 10.0 + s} for s in range(1, 5)]
    shown = panels(curves_figure({"run": records}))
    assert shown["loss"].get_yscale() == "log" and shown["probe/acc"].get_yscale() == "linear"
    assert shown["loss"].get_xlabel() == "step"  # no steps_per_epoch logged: steps on x


@pytest.mark.parametrize("logy", [False, True])
def test_plot_curves_writes_png(tmp_path, logy):
    series = {
        "mae": ([0, 1, 2, 3], [1.0, 0.5, 0.3, 0.2]),
        "mae+magma": ([0, 1, 2, 3], [1.1, 0.6, 0.0, 0.25]),  # a zero is skipped on a log axis
        "single point": ([5], [0.4]),
    }
    path = plot_curves(series, tmp_path / "curves" / "loss.png", title="loss", xlabel="epoch", ylabel="loss", logy=logy)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]


def test_bad_series_are_refused(tmp_path):
    with pytest.raises(MimregError, match="equal lengths"):
        plot_curves({"a": ([0, 1], [1.0])}, tmp_path / "a.png", "t", "x", "y")
    with pytest.raises(MimregError, match="no series"):
        plot_curves({}, tmp_path / "a.png", "t", "x", "y")
    with pytest.raises(MimregError, match="no logged values"):
        plot_run_curves({"run": [{"kind": "start"}]}, tmp_path / "a.png")


def test_a_term_missing_for_a_while_leaves_a_gap():
    # monitored every other record, except while its regularizer is on (steps 10-20)
    records = [{"kind": "train", "step": s, **({"monitor/magma": 1.0} if s % 2 == 0 and not 10 <= s <= 20 else {})}
               for s in range(1, 31)]
    xs, ys = series_of(records, "monitor/magma")
    assert xs == [2, 4, 6, 8, 15, 22, 24, 26, 28, 30]  # one NaN in the middle of the long absence
    assert [y == y for y in ys] == [True] * 4 + [False] + [True] * 5
    every = [{"kind": "train", "step": s, "rec": 1.0} for s in range(1, 9)]
    assert series_of(every, "rec") == (list(range(1, 9)), [1.0] * 8)


def test_the_representation_monitors_keys_are_panels_after_the_online_knn():
    records = [{"kind": "start", "step": 0, "steps_per_epoch": 10},
               {"kind": "train", "step": 10, "loss": 1.0, "probe/acc": 20.0},
               {"kind": "knn", "step": 10, "knn/top1": 50.0},
               *({"kind": "rep", "step": s, "rankme/cls": 10.0 + s, "alpha_req/cls": 2.0, "rankme/emb": 5.0}
                 for s in (5, 10, 15))]
    assert curve_keys(records) == ["loss", "probe/acc", "knn/top1", "rankme/cls", "rankme/emb", "alpha_req/cls"]
    assert series_of(records, "rankme/cls") == ([0.5, 1.0, 1.5], [15.0, 20.0, 25.0])  # from the rep records, in epochs
