"""Result files named by what defines them, the comparison table across runs, and runs grouped by\ntheir settings with statistics over seeds."""

import csv
import io
import json

import pytest
import yaml

from mimreg.errors import MimregError
from mimreg.eval.grouped_results import grouped_statistics, grouped_table
from mimreg.eval.results import load_results, result_stem, results_table, save_result
from mimreg.eval.run_groups import flat_config, grid_axes
from mimreg.eval.statistics import compare, summarize


def meta(data="digits", step=22, latest=True, recipe="digits/mae"):
    return {"checkpoint": "x", "step": step, "epoch": 2, "recipe": recipe, "latest": latest, "data": data,
            "train_images": 100, "test_images": 50}


def save_linear(run, top1, variant="sweep", data="digits", pool="cls", **kwargs):
    return save_result(run, meta(data, **kwargs), protocol="linear", variant=variant, pool=pool, options={},
                       result={"top1": top1})


def test_different_settings_never_share_a_file(tmp_path):
    paths = {save_linear(tmp_path, 50.0, variant=v, data=d, pool=p)
             for v in ("sweep", "magma", "mae") for d in ("digits", "imagefolder") for p in ("cls", "mean")}
    assert len(paths) == 12 and all(p.parent == tmp_path / "evals" for p in paths)
    knn = save_result(tmp_path, meta("imagefolder"), protocol="knn", variant=None, pool="cls", options={"test": 100},
                      result={"knn10_euclidean": 70.0})
    assert knn.name == "knn_imagefolder_cls_test100.json"
    # the same evaluation again replaces its own file; an older checkpoint's gets its step in the name
    assert save_linear(tmp_path, 51.0) == tmp_path / "evals" / "linear-sweep_digits_cls.json"
    assert save_linear(tmp_path, 40.0, step=8, latest=False).name == "linear-sweep_digits_cls_step8.json"
    assert len(load_results(tmp_path)) == 14  # 12 + knn + the older step
    assert result_stem("finetune", None, "digits", "gap", {"fraction": 0.01, "blocks": 2}) == \
        "finetune_digits_gap_blocks2_fraction0.01"


@pytest.fixture
def two_runs(tmp_path):
    first, second = tmp_path / "mae", tmp_path / "u-mae"
    save_linear(first, 60.0)
    save_linear(first, 70.0, variant="mae")
    save_result(first, meta(), protocol="knn", variant=None, pool="cls", options={},
                result={"knn10_euclidean": 50.0, "knn20_cosine": 52.0})
    save_linear(second, 65.5, recipe="digits/u-mae", step=30)
    save_result(second, meta(recipe="digits/u-mae"), protocol="knn", variant=None, pool="cls", options={},
                result={"knn10_euclidean": 47.0, "knn20_cosine": 52.0})
    return [first, second]


def test_markdown_table_has_runs_as_rows_and_differences_to_the_first(two_runs):
    lines = results_table(two_runs).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "recipe", "step", "knn10_euclidean cls digits", "knn20_cosine cls digits",
                      "linear-mae cls digits", "linear-sweep cls digits"]
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    second = [c.strip() for c in lines[3].strip("|").split("|")]
    assert first[1:] == ["digits/mae", "22", "50.0", "52.0", "70.0", "60.0"]
    # the second run's kNN was measured at step 22, before its linear probe at step 30
    assert second[1:] == ["digits/u-mae", "30", "47.0 (-3.0) [step 22]", "52.0 (+0.0) [step 22]", "-", "65.5 (+5.5)"]


def test_csv_and_json_carry_values_and_differences(two_runs):
    rows = list(csv.DictReader(io.StringIO(results_table(two_runs, "csv"))))
    assert rows[1]["linear-sweep cls digits"] == "65.5" and rows[1]["linear-sweep cls digits diff"] == "5.5"
    assert rows[0]["linear-sweep cls digits diff"] == "" and rows[1]["linear-mae cls digits"] == ""
    data = json.loads(results_table(two_runs, "json"))
    assert data["baseline"] == str(two_runs[0])
    assert data["runs"][1]["values"]["knn10_euclidean cls digits"] == 47.0
    assert data["runs"][1]["difference"]["knn10_euclidean cls digits"] == -3.0
    assert data["runs"][1]["difference"]["linear-mae cls digits"] is None


def test_results_of_earlier_releases_are_read_and_newer_ones_win(tmp_path):
    (tmp_path / "eval_linear.json").write_text(json.dumps(
        {"protocol": "linear", "data": "digits", "step": 5, "recipe": "r", "results": {"cls": {"top1": 41.1, "protocol": "magma"}}}))
    (tmp_path / "eval_knn.json").write_text(json.dumps(
        {"protocol": "knn", "data": "digits", "step": 5, "results": {"cls": {"knn10_euclidean": 73.6}}}))
    data = json.loads(results_table([tmp_path], "json"))["runs"][0]["values"]
    assert data == {"knn10_euclidean cls digits": 73.6, "linear-magma cls digits": 41.1}
    save_result(tmp_path, meta(), protocol="knn", variant=None, pool="cls", options={}, result={"knn10_euclidean": 80.0})
    assert json.loads(results_table([tmp_path], "json"))["runs"][0]["values"]["knn10_euclidean cls digits"] == 80.0


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(MimregError, match="does not exist"):
        results_table([tmp_path / "missing"])
    with pytest.raises(MimregError, match="no evaluation results"):
        results_table([tmp_path])
    with pytest.raises(MimregError, match="format"):
        results_table([tmp_path], "html")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "knn_x_cls.json").write_text("{not json")
    with pytest.raises(MimregError, match="knn_x_cls.json"):
        results_table([tmp_path])


def test_values_measured_at_different_steps_each_carry_their_step(tmp_path):
    # evaluated during training: linear at step 31 (then the latest checkpoint), kNN at step 108
    save_linear(tmp_path, 61.0, step=31)
    save_result(tmp_path, meta(step=108), protocol="knn", variant=None, pool="cls", options={},
                result={"knn10_euclidean": 55.0})
    lines = results_table([tmp_path]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert row["step"] == "108" and row["knn10_euclidean cls digits"] == "55.0"
    assert row["linear-sweep cls digits"] == "61.0 [step 31]"
    [csv_row] = list(csv.DictReader(io.StringIO(results_table([tmp_path], "csv"))))
    assert (csv_row["linear-sweep cls digits"], csv_row["linear-sweep cls digits step"]) == ("61", "31")
    assert csv_row["knn10_euclidean cls digits step"] == "108"
    [run] = json.loads(results_table([tmp_path], "json"))["runs"]
    assert run["step"] == 108
    assert run["steps"] == {"knn10_euclidean cls digits": 108, "linear-sweep cls digits": 31}


def test_the_representation_monitors_last_values_are_columns_with_their_step(tmp_path):
    save_linear(tmp_path, 61.0, step=31)
    records = [{"kind": "start", "step": 0}, {"kind": "rep", "step": 20, "rankme/cls": 10.0, "alpha_req/cls": 2.0},
               {"kind": "train", "step": 30, "loss": 0.5},
               {"kind": "rep", "step": 31, "rankme/cls": 12.345678, "alpha_req/cls": 1.23456, "rankme/emb": 40.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = results_table([tmp_path]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert (row["rankme/cls"], row["alpha_req/cls"], row["rankme/emb"]) == ("12.3", "1.23", "40")
    [run] = json.loads(results_table([tmp_path], "json"))["runs"]
    assert run["values"]["rankme/cls"] == 12.345678 and run["steps"]["alpha_req/cls"] == 31


# ---------------------------------------------------------------- grouped by settings, over seeds
def make_run(folder, recipe, seed, values: dict, lr=0.001, regularizers=()):
    """A run folder as pretraining and evaluation leave it: config.yaml and evals/*.json."""
    folder.mkdir(parents=True)
    config = {"recipe": recipe, "description": recipe, "data": {"name": "digits", "root": str(folder)},
              "regularizers": [{"name": r, "weight": 0.01} for r in regularizers],
              "optim": {"lr": lr}, "train": {"seed": seed, "device": "cpu"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for variant, top1 in values.items():
        save_linear(folder, top1, variant=variant, recipe=recipe)
    return folder


@pytest.fixture
def seeded_grid(tmp_path):
    """mae and u-mae over seeds 0-3: each seed moves both by the same large amount (its initial
    weights and data order), and u-mae's sweep probe is 1 point higher, its mae probe the same."""
    seed_effect, noise = [0.0, 6.0, -4.0, 3.0], [0.1, -0.2, 0.15, -0.05]
    runs = []
    for recipe, gain, regularizers in (("digits/mae", 0.0, ()), ("digits/u-mae", 1.0, ("uniformity",))):
        for seed in range(4):
            values = {"sweep": 60.0 + seed_effect[seed] + gain + noise[seed] * (gain > 0),
                      "mae": 50.0 + seed_effect[seed] + noise[seed] * (gain > 0)}
            runs.append(make_run(tmp_path / f"{recipe.split('/')[1]}-s{seed}", recipe, seed, values,
                                 regularizers=regularizers))
    return runs


def test_the_grid_axes_are_the_settings_that_differ_but_the_seed(tmp_path):
    from mimreg.config import config_text, load_config

    for name, recipe, overrides in (("a", "mae", ["train.seed=1"]), ("b", "u-mae", ["train.seed=2"]),
                                    ("c", "u-mae", ["optim.lr=0.01", "data.num_workers=2"]),
                                    ("d", "u-mae", ["regularizers.uniformity.weight=0.1"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(config_text(load_config(recipe, overrides)))
    configs = [flat_config(tmp_path / name) for name in "abcd"]
    assert configs[1]["regularizers"] == ["uniformity"] and configs[1]["regularizers.uniformity.weight"] == 0.01
    # description and regularizers follow the recipe; the seed and data.num_workers change no group
    assert grid_axes(configs[:3]) == ["recipe", "optim.lr"]
    assert grid_axes(configs[:2]) == ["recipe"]
    # a setting that only some runs have (MAE has no uniformity entry) is an axis where it splits them finer
    assert grid_axes([configs[0], configs[1], configs[3]]) == ["recipe", "regularizers.uniformity.weight"]


def test_groups_give_mean_std_interval_and_a_paired_difference(seeded_grid):
    data = grouped_statistics(seeded_grid, ["recipe"])
    assert data["group_by"] == ["recipe"] and data["baseline"] == "recipe=digits/mae"
    assert [(g["group"], g["seeds"]) for g in data["groups"]] == [("recipe=digits/mae", [0, 1, 2, 3]),
                                                                   ("recipe=digits/u-mae", [0, 1, 2, 3])]
    rows = {(r["metric"], r["group"]): r for r in data["statistics"]}
    mae = rows["linear-sweep cls digits", "recipe=digits/mae"]
    expected = summarize([60.0, 66.0, 56.0, 63.0])
    assert (mae["mean"], mae["std"], mae["n"], mae["ci_low"], mae["ci_high"]) == \
        (expected.mean, expected.std, 4, expected.ci_low, expected.ci_high)
    assert mae["verdict"] is None  # the baseline itself
    sweep = rows["linear-sweep cls digits", "recipe=digits/u-mae"]
    assert (sweep["test"], sweep["n_pairs"], sweep["verdict"]) == ("paired t-test", 4, "higher")
    assert sweep["difference"] == pytest.approx(1.0) and 0 < sweep["difference_ci_low"] < 1 < sweep["difference_ci_high"]
    probe = rows["linear-mae cls digits", "recipe=digits/u-mae"]
    assert probe["verdict"] == "no difference shown" and probe["difference_ci_low"] < 0 < probe["difference_ci_high"]
    # without pairing the seeds' spread (std 4.3) hides the 1-point gain
    welch = compare({s: v for s, v in enumerate([60.0, 66.0, 56.0, 63.0])},
                    {f"u{s}": v for s, v in enumerate([61.1, 66.8, 57.15, 63.95])})
    assert welch.verdict == "no difference shown"


def test_results_group_by_through_the_cli_in_every_format(seeded_grid, capsys):
    from mimreg.cli import main

    args = ["results", *map(str, seeded_grid), "--group-by", "recipe", "--baseline", "recipe=digits/u-mae"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("groups by recipe; baseline: recipe=digits/u-mae\n")
    lines = {tuple(c.strip() for c in line.strip("|").split("|")) for line in out.splitlines() if line.startswith("|")}
    # mean 61.25, std sqrt(54.75 / 3) = 4.27, t(0.975, 3) = 3.1824: half-width 6.80
    assert ("linear-sweep cls digits", "recipe=digits/mae", "4", "61.2", "4.3", "[54.5, 68.0]") in lines
    # per-seed differences -1.1, -0.8, -1.15, -0.95: std 0.158, half-width 0.25, t = 12.6
    assert ("linear-sweep cls digits", "recipe=digits/mae", "-1.0", "[-1.3, -0.7]", "paired t-test, 4 pairs",
            "0.0011", "lower") in lines
    assert "no interval" not in out
    assert main([*args, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["metric"], r["group"], r["verdict"]) for r in rows] == [
        ("linear-mae cls digits", "recipe=digits/mae", "no difference shown"),
        ("linear-mae cls digits", "recipe=digits/u-mae", ""),
        ("linear-sweep cls digits", "recipe=digits/mae", "lower"),
        ("linear-sweep cls digits", "recipe=digits/u-mae", "")]
    assert rows[2]["seeds"] == "0 1 2 3" and rows[2]["test"] == "paired t-test" and rows[2]["n"] == "4"
    assert float(rows[2]["difference"]) == pytest.approx(-1.0) and float(rows[2]["mean"]) == pytest.approx(61.25)
    assert main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == grouped_statistics(seeded_grid, ["recipe"], "recipe=digits/u-mae")
    assert data["groups"][1]["runs"] == [str(r) for r in seeded_grid[4:]]


def test_one_seed_per_group_prints_the_means_and_says_no_interval_can_be_given(seeded_grid, capsys):
    from mimreg.cli import main

    assert main(["results", str(seeded_grid[0]), str(seeded_grid[5]), "--group-by"]) == 0  # default axes
    out = capsys.readouterr().out
    assert out.startswith("groups by recipe; baseline: recipe=digits/mae\n")
    assert "| linear-sweep cls digits | recipe=digits/u-mae |   1 | 66.8 | -   | none (one seed) |" in out
    assert "| linear-sweep cls digits | recipe=digits/u-mae | +6.8       | none (one seed) |    - |   - | " \
           "no interval (one seed) |" in out
    assert out.rstrip().endswith("one seed in a group: its mean is shown, but no interval can be given (n=1)")


def test_grouping_mistakes_name_the_fix(seeded_grid, tmp_path):
    with pytest.raises(MimregError, match=r"--group-by optim.momentum: no run has that setting; .*differ among "
                                          r"the runs: recipe\)"):
        grouped_table(seeded_grid, group_by=["optim.momentum"])
    with pytest.raises(MimregError, match="--baseline 'digits/msn' matches no group; name one of: "
                                          "recipe=digits/mae; recipe=digits/u-mae"):
        grouped_table(seeded_grid, baseline="digits/msn")
    assert grouped_statistics(seeded_grid, baseline="digits/u-mae")["baseline"] == "recipe=digits/u-mae"
    save_linear(tmp_path / "no-config", 50.0)
    with pytest.raises(MimregError, match="no-config has no config.yaml, which grouping reads"):
        grouped_table([*seeded_grid, tmp_path / "no-config"])


def test_a_group_with_two_runs_of_one_seed_is_compared_unpaired(seeded_grid, tmp_path):
    again = make_run(tmp_path / "mae-s0-again", "digits/mae", 0, {"sweep": 60.5, "mae": 50.0})
    rows = grouped_statistics([*seeded_grid, again], ["recipe"])["statistics"]
    sweep = next(r for r in rows if r["metric"] == "linear-sweep cls digits" and r["group"] == "recipe=digits/u-mae")
    assert (sweep["test"], sweep["n_pairs"]) == ("Welch t-test", 0)  # which seed-0 run would pair is unknown
    assert sweep["difference"] == pytest.approx(62.25 - (60.0 + 66.0 + 56.0 + 63.0 + 60.5) / 5)


def test_a_study_folder_stands_for_its_runs(tmp_path):
    from mimreg.eval.results import run_folders

    for name in ("b_seed0", "a_seed1"):
        (tmp_path / "study" / "runs" / name).mkdir(parents=True)
        (tmp_path / "study" / "runs" / name / "config.yaml").write_text("recipe: x\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("recipe: x\n")
    assert run_folders([tmp_path / "run", tmp_path / "study"]) == [
        tmp_path / "run", tmp_path / "study" / "runs" / "a_seed1", tmp_path / "study" / "runs" / "b_seed0"]
    assert run_folders([tmp_path / "missing"]) == [tmp_path / "missing"]  # named as given: the error says it
