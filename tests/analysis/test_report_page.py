"""`mimreg report`: one self-contained page with every run's facts, evaluations and pictures."""

import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from support import linear_result_file
from mimreg.analysis.evaluations import flat_metrics, read_evaluations
from mimreg.analysis.report import read_run
from mimreg.cli import main
from mimreg.engine.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("single_thread")


class Page(HTMLParser):
    """Tags, attributes and text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def page(study_report):
    return study_report, study_report.read_text()


def test_the_page_is_self_contained(page):
    _, text = page
    parsed = Page(text)
    tags = {tag for tag, _ in parsed.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "video", "audio"}
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(https?:|file:)?//[a-z0-9]", outside, re.I)  # no URL at all beside the data: URIs
    assert "@import" not in outside and "url(" not in outside and "@font-face" not in outside
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 4 * 7 + 3  # 7 pictures per run; PaCMAP, t-SNE side by side and overlaid curves
    for src in images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "@media print" in text


def test_each_run_shows_its_facts_and_every_evaluation(page, study):
    _, text = page
    words = " ".join(Page(text).text)
    for run in study:
        view = read_run(run)
        assert f'id="run-{study.index(run)}"' in text and view.recipe == "digits/u-mae"
        assert "4 steps" in words and "vit_micro/4" in words and "uniformity ×0.01" in words
        for protocol, payload in read_evaluations(run).items():
            for path in flat_metrics(payload):
                assert path in words, (protocol, path)
    assert "Reconstructions" in words and "Attention of the cls token" in words and "PaCMAP" in words


def test_comparison_table_differences_to_the_first_run(page, study):
    _, text = page
    table = text[text.index('<table class="compare">'):text.index("</table>")]
    first = json.loads(linear_result_file(study[0]).read_text())["result"]["top1"]
    heads = re.findall(r'<th title="([^"]*)">', table)
    assert {"linear cls/top1", "knn cls/knn10_euclidean", "erank cls/effective_rank", "DBI cls/davies_bouldin",
            "steps"} <= set(heads)
    labels = re.findall(r'<th title="[^"]*">([^<]*)</th>', table)
    assert labels[:4] == ["linear top-1 (cls)", "kNN k=10 euclid. (cls)", "kNN k=20 cosine (cls)", "effective rank (cls)"]
    assert "DBI (cls)" in labels
    # the representation monitor's last values (the demo measured after its last step), cls only
    assert {"monitor cls/rankme", "monitor cls/alpha_req"} <= set(heads) and "monitor mean/rankme" not in heads
    assert {"last RankMe (cls)", "last α-ReQ (cls)"} <= set(labels)
    [logged] = [r for r in read_metrics(study[0] / "metrics.jsonl") if r["kind"] == "rep"]
    first_row = [r for r in re.findall(r"<tr><th class=\"text\">(.*?)</tr>", table) if "<a " in r][0]
    assert re.findall(r"<td>(.*?)</td>", first_row)[heads.index("monitor cls/rankme")] == f"{logged['rankme/cls']:.3g}"
    rows = [r for r in re.findall(r"<tr><th class=\"text\">(.*?)</tr>", table) if "<a " in r]
    assert [re.search(r">([^<]+)</a>", r).group(1) for r in rows] == ["mae", "u-mae", "m-mae", "mu-mae"]
    column = heads.index("linear cls/top1")
    for i, row in enumerate(rows):
        cell = re.findall(r"<td>(.*?)</td>", row)[column]
        assert cell.startswith(f"{first + i:.1f}")
        assert cell.endswith(f'<span class="delta">+{i:.1f}</span>' if i else f"{first:.1f}")
        assert ('<span class="delta">±0</span>' in row) == (i > 0)  # the copies' other numbers are the same


def test_cli_writes_the_page_and_refuses_a_folder_that_is_no_run(study, tmp_path, capsys):
    out = tmp_path / "one.html"
    assert main(["report", str(study[0]), "--out", str(out), "--no-analyze"]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert out.read_text().count("<img ") == 7  # one run: its pictures, nothing side by side
    assert main(["report", str(tmp_path), "--out", str(out)]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err


def test_the_page_shows_the_config_the_checkpoint_trained_with(tiny_run, tmp_path, capsys):
    import yaml

    config = tiny_run / "config.yaml"
    original = config.read_text()
    edited = yaml.safe_load(original)
    edited["model"]["arch"], edited["method"]["mask_ratio"] = "vit_nope", 7.5
    config.write_text(yaml.safe_dump(edited))
    run = read_run(tiny_run)
    assert run.config["model"]["arch"] == "vit_micro" and run.config["method"]["mask_ratio"] == 0.75
    [warning] = run.warnings
    assert warning == (f"{config} differs from the config ckpt_00000024.pt trained with in "
                       "['method.mask_ratio', 'model.arch']; shown: the checkpoint's")
    assert f"warning: {warning}" in capsys.readouterr().err
    out = tmp_path / "r.html"
    assert main(["report", str(tiny_run), "--out", str(out), "--no-analyze"]) == 0
    text = out.read_text()
    assert "vit_micro/4" in text and "vit_nope" not in text.replace(warning, "") and "shown: the checkpoint" in text
    config.write_text(original)
    assert read_run(tiny_run).warnings == []  # config.yaml as pretraining wrote it agrees


def test_a_config_yaml_with_a_yaml_error_is_named_in_one_line(tiny_run, tmp_path, capsys):
    import shutil

    config = tiny_run / "config.yaml"
    config.write_text("model: {arch: vit_micro\nmethod: [\n")
    run = read_run(tiny_run)  # the checkpoint's config stands in
    assert run.config["model"]["arch"] == "vit_micro"
    assert run.warnings[0].startswith(f"{config} is not valid YAML (") and run.warnings[0].endswith(
        "; shown: the config stored in " + str(tiny_run / "checkpoints" / "ckpt_00000024.pt"))
    shutil.rmtree(tiny_run / "checkpoints")
    capsys.readouterr()
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "r.html"), "--no-analyze"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config} is not valid YAML (") and len(err.strip().splitlines()) == 1
    assert "the run has no checkpoint whose config could stand in; fix the file" in err


def test_pretraining_minutes_get_no_difference_in_the_comparison(tmp_path):
    """Time is not a quality: a run that ran on a quieter machine shows no grey `−15.9`."""
    from mimreg.analysis.report import RunView, comparison_table

    def run(name, minutes, top1):
        return RunView(tmp_path / name, name, {}, {"steps": 4}, [{"step": 4, "time": 60.0 * minutes}],
                       {"linear": {"cls": {"top1": top1}}})

    table = comparison_table([run("a", 20.0, 50.0), run("b", 4.1, 52.5)])
    rows = re.findall(r"<tr><th class=\"text\">(.*?)</tr>", table)
    cells = re.findall(r"<td>(.*?)</td>", rows[-1])
    heads = re.findall(r'<th title="([^"]*)">', table)
    assert cells[heads.index("linear cls/top1")] == '52.5 <span class="delta">+2.5</span>'
    assert cells[heads.index("pretrain min")] == "4.1" and cells[heads.index("steps")] == "4"
