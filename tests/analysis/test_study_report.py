"""`mimreg report STUDY_DIR`: the page opens with the runs grouped by setting, each metric as points
per seed with the group's mean and interval, the differences to the baseline, and curves per group."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from mimreg.cli import main
from mimreg.eval.grouped_results import difference_cells, grouped_statistics, mean_cells
from mimreg.eval.results import run_folders, save_result

pytestmark = pytest.mark.usefixtures("single_thread")

SEED_EFFECT = [0.0, 5.0, -3.0]  # each seed moves both recipes alike (its initial weights and data order)
GAIN = [1.0, 1.2, 0.8]  # u-mae's linear top-1 over mae's, per seed


def make_run(folder, recipe: str, seed: int, gain: float):
    """A finished run as pretraining and evaluation leave it: config.yaml, metrics.jsonl, evals/*.json."""
    from mimreg.config import config_text, load_config

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config_text(load_config(recipe, [f"train.seed={seed}"])))
    records = [{"kind": "start", "step": 0, "steps_per_epoch": 4}]
    records += [{"kind": "train", "step": step, "loss": 1.0 - 0.1 * step + 0.01 * seed + gain / 100, "lr": 0.001,
                 **({"reg/uniformity": -1.0 - gain} if recipe == "u-mae" else {})} for step in (2, 4, 6)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {"checkpoint": "x", "step": 6, "epoch": 2, "recipe": f"digits/{recipe}", "latest": True, "data": "digits",
            "train_images": 100, "test_images": 50}
    for pool in ("cls", "mean"):
        base = 60.0 + SEED_EFFECT[seed] + (pool == "mean")
        save_result(folder, meta, protocol="linear", variant="sweep", pool=pool, options={},
                    result={"top1": base + gain})
        save_result(folder, meta, protocol="knn", variant=None, pool=pool, options={},
                    result={"knn10_euclidean": base - 5 + gain / 2, "knn20_cosine": base - 4})
        save_result(folder, meta, protocol="erank", variant=None, pool=pool, options={},
                    result={"effective_rank": 20.0 + seed + 3 * gain})
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study folder of mae and u-mae over seeds 0-2 (u-mae 0.8 to 1.2 points higher on the linear probe)."""
    folder = tmp_path_factory.mktemp("study") / "s"
    for recipe in ("mae", "u-mae"):
        for seed in range(3):
            make_run(folder / "runs" / f"{recipe}_seed{seed}", recipe, seed, GAIN[seed] if recipe == "u-mae" else 0.0)
    return folder


@pytest.fixture(scope="module")
def page(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "page.html"
    assert main(["report", str(study), "--out", str(out)]) == 0  # a study folder: not analysed by default
    return out.read_text()


def section_of(text: str) -> str:
    return text[text.index('<section id="seeds">'):text.index('<section id="compare">')]


def images(html: str) -> list[str]:
    return re.findall(r'src="(data:image/png;base64,[^"]+)"', html)


def test_the_seed_section_comes_first_with_one_figure_per_kind_of_metric(page, study):
    assert page.index('<section id="seeds">') < page.index('<section id="compare">') < page.index('id="run-0"')
    assert '<a href="#seeds">Seeds and intervals</a>' in page and "<title>mimreg report: study s</title>" in page
    assert "<script" not in page
    section = section_of(page)
    assert "Runs grouped by recipe" in section and "Baseline: recipe=digits/mae" in section
    assert "mae_seed0, mae_seed1, mae_seed2" in section and "u-mae_seed0, u-mae_seed1, u-mae_seed2" in section
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", section)
    # linear, kNN, effective rank: one figure each, its panels the pools and variants; the differences; the curves
    assert [c.split(":")[0] for c in captions[:3]] == ["Linear probe top-1 (%)", "kNN top-1 (%)", "Effective rank"]
    assert len(images(section)) == len(captions) == 5
    for src in images(section):
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "one point per seed (the same seed has the same colour and marker in every group" in captions[0]
    assert not (study / "runs" / "mae_seed0" / "analysis.json").exists()


def test_the_tables_carry_the_numbers_of_results_group_by(page, study):
    section = section_of(page)
    data = grouped_statistics(run_folders([study]))
    rows = {(r["metric"], r["group"]): r for r in data["statistics"]}
    linear = rows["linear-sweep cls digits", "recipe=digits/u-mae"]
    # per-seed gains 1.0, 1.2, 0.8: mean 1.0, std 0.2, t(0.975, 2) = 4.303: half-width 0.50; t = 8.66, p = 0.013
    assert linear["difference"] == pytest.approx(1.0) and linear["verdict"] == "higher"
    cells = difference_cells(linear)
    assert (cells["difference"], cells["interval"], cells["test"], cells["p"]) == \
        ("+1.0", "[0.5, 1.5]", "paired t-test, 3 pairs", "0.013")
    assert "<td>+1.0</td><td>[0.5, 1.5]</td><td class=\"text\">paired t-test, 3 pairs</td><td>0.013</td>" \
           "<td class=\"text\">higher</td>" in section
    knn = difference_cells(rows["knn20_cosine cls digits", "recipe=digits/u-mae"])  # the same by every seed
    assert (knn["difference"], knn["verdict"]) == ("+0.0", "no difference shown")
    mean = mean_cells(rows["linear-sweep cls digits", "recipe=digits/mae"])  # 60, 65, 57: half-width 10.1
    assert (mean["mean"], mean["interval"]) == ("60.7", "[50.6, 70.7]")
    assert "<td>60.7</td><td>4.0</td><td>[50.6, 70.7]</td>" in section
    assert section.count("<tr>") == 1 + 2 + 1 + 2 * 8 + 1 + 8  # groups, means, differences (with their heads)


def test_curves_per_group_are_the_mean_and_a_min_max_band(page, study):
    from mimreg.analysis.seed_report import aligned, epoch_scale, shared_train_keys
    from mimreg.engine.metrics import read_metrics

    section = section_of(page)
    assert "Training curves per group" in section
    assert "Each group&#x27;s mean over its seeds (line), band: min..max over the group&#x27;s seeds, at the steps " \
           "every seed of the group logged" in section
    runs = [[{"kind": "train", "step": s, "loss": float(s + seed)} for s in steps]
            for seed, steps in enumerate([(2, 4, 6), (2, 4), (0, 2, 4, 6)])]
    steps, values = aligned(runs, "loss")
    assert steps.tolist() == [2, 4] and values.tolist() == [[2, 3, 4], [4, 5, 6]]
    groups = [[read_metrics(study / "runs" / f"{recipe}_seed{seed}" / "metrics.jsonl") for seed in range(3)]
              for recipe in ("mae", "u-mae")]
    # a term only u-mae logs gets its panel (u-mae's line alone); a key one run of each group lacks does not
    assert shared_train_keys(groups) == ["loss", "reg/uniformity", "lr"]
    assert shared_train_keys([groups[0], [*groups[1][:2], runs[0]]]) == ["loss", "lr"]
    assert epoch_scale(groups[1]) == 4 and epoch_scale([*groups[1], runs[0]]) is None  # x in epochs, else steps


def test_one_seed_per_group_shows_points_and_means_and_says_no_interval(study, tmp_path):
    out = tmp_path / "one.html"
    runs = [study / "runs" / "mae_seed0", study / "runs" / "u-mae_seed1"]
    assert main(["report", *map(str, runs), "--group-by", "recipe", "--out", str(out), "--no-analyze"]) == 0
    section = section_of(out.read_text())
    assert "one seed in a group: its mean is shown, but no interval can be given (n=1); such a group shows its " \
           "points and mean only." in section
    assert "<td>none (one seed)</td>" in section and "no interval (one seed)" in section
    assert len(images(section)) == 5


def test_run_folders_without_grouping_keep_the_page_as_it_was(study, tmp_path):
    out = tmp_path / "plain.html"
    assert main(["report", str(study / "runs" / "mae_seed0"), "--out", str(out), "--no-analyze"]) == 0
    assert 'id="seeds"' not in out.read_text()


def test_a_study_without_evaluations_shows_its_groups_and_curves_and_says_what_to_run(tmp_path, capsys):
    import shutil

    for recipe in ("mae", "u-mae"):
        for seed in range(2):
            run = make_run(tmp_path / "s" / "runs" / f"{recipe}_seed{seed}", recipe, seed, 0.5)
            shutil.rmtree(run / "evals")
    out = tmp_path / "page.html"
    assert main(["report", str(tmp_path / "s"), "--out", str(out), "--baseline", "digits/u-mae"]) == 0
    section = section_of(out.read_text())
    assert "No evaluation results yet: <code>mimreg eval ...</code>" in section
    assert "Baseline: recipe=digits/u-mae." in section
    assert "Training curves per group" in section and len(images(section)) == 1
    capsys.readouterr()
    assert main(["report", str(tmp_path / "s"), "--out", str(out), "--group-by", "optim.no_such_setting"]) == 2
    assert capsys.readouterr().err.startswith("error: --group-by optim.no_such_setting: no run has that setting; give dotted")


def test_the_study_page_renders_cleanly_in_a_browser(page, tmp_path_factory):
    from PIL import Image as PILImage

    from browser import check_page, find_chromium

    if find_chromium() is None:
        pytest.skip("no chromium on PATH: apt-get install chromium (as .ci/run does) to run the browser check")
    html = tmp_path_factory.mktemp("browser") / "page.html"
    html.write_text(page)
    check = check_page(html, html.parent / "shots")
    print(f"\nscreenshots: {html.parent / 'shots'}")
    assert check.console_errors == [] and check.requests == []
    # the section's 5 and the comparison's overlaid curves (the runs are not analysed: no pictures of their own)
    assert len(check.images) == 6 and all(image["ok"] and image["width"] > 100 for image in check.images)
    assert PILImage.open(check.screenshots["full"]).size[0] <= 1366  # no sideways scrolling
