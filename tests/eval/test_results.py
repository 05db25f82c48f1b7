"""Result files named by what defines them, and the comparison table across runs."""

import csv
import io
import json

import pytest

from mimreg.errors import MimregError
from mimreg.eval.results import load_results, result_stem, results_table, save_result


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
