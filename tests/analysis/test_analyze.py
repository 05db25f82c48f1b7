"""`mimreg analyze`: every picture of a run, analysis.json, and the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from support import linear_result_file
from mimreg.analysis.analyze import PICTURES
from mimreg.analysis.inputs import class_sample, load_test_images
from mimreg.cli import main
from mimreg.data import load_dataset
from mimreg.engine.metrics import read_metrics
from mimreg.eval.frozen import load_encoder
from mimreg.spectra import alpha_req, rankme

pytestmark = pytest.mark.usefixtures("single_thread")
ALL = {"reconstructions", "attention", "pca", "pacmap", "tsne", "curves", "spectrum"}


def test_analysis_json_and_every_picture(analysed_run):
    report = json.loads((analysed_run / "analysis.json").read_text())
    assert (report["step"], report["recipe"], report["data"]) == (4, "digits/u-mae", "synthetic")
    assert set(report["pictures"]) == ALL and set(report["seconds"]) == ALL | {"features"}
    for name, path in report["pictures"].items():
        assert path == str(analysed_run / "analysis" / f"{name}.png")
        assert Image.open(path).size[0] > 300, name
    assert report["linear_top1"] == json.loads(linear_result_file(analysed_run).read_text())["result"]["top1"]
    assert report["sample"]["images"] == 256 and len(report["sample"]["classes"]) == 10
    for pool in ("cls", "mean"):
        assert 1.0 <= report["effective_rank"][pool] <= 128 and len(report["singular_values"][pool]) == 128
    # the representation monitor measured after the run's last step (4): its values, as logged
    logged = [r for r in read_metrics(analysed_run / "metrics.jsonl") if r["kind"] == "rep"]
    assert [r["step"] for r in logged] == [4]
    assert report["monitor_last"] == {k: {"step": 4, "value": v} for k, v in logged[0].items()
                                      if k.startswith(("rankme/", "alpha_req/"))}
    assert set(report["monitor_last"]) == {f"{m}/{f}" for m in ("rankme", "alpha_req") for f in ("cls", "mean")}
    coords = np.load(analysed_run / "analysis" / "pacmap.npz")
    assert coords["coords"].shape == (256, 2) and list(coords["class_names"])[:1] == ["pattern0"]


def test_dbi_is_scikit_learns_on_the_evaluated_features(analysed_run):
    """Recomputed here with evaluation's encoder loader and a plain forward of the same images."""
    from sklearn.metrics import davies_bouldin_score

    encoder, cfg, _ = load_encoder(analysed_run)
    labels = np.asarray(load_dataset("synthetic", "test", None).labels)
    shown = load_test_images("synthetic", None, 32, indices=class_sample(labels, 10, 100, seed=0))
    with torch.no_grad():
        features = {pool: encoder.features(shown.images, pool).double().numpy() for pool in ("cls", "mean")}
    report = json.loads((analysed_run / "analysis.json").read_text())
    for pool in ("cls", "mean"):
        assert report["davies_bouldin"][pool] == pytest.approx(
            davies_bouldin_score(features[pool], shown.labels.numpy()), rel=1e-4)
    every = load_test_images("synthetic", None, 32, indices=np.arange(len(labels)))  # all 256: every one analysed
    with torch.no_grad():
        features = {pool: encoder.features(every.images, pool).double() for pool in ("cls", "mean")}
    for pool in ("cls", "mean"):
        assert report["rankme"][pool] == pytest.approx(rankme(features[pool]), rel=1e-4)
        assert report["alpha_req"][pool] == pytest.approx(alpha_req(features[pool]), rel=1e-3)


def test_cli_draws_the_pictures_asked_for(tiny_run, capsys):
    code = main(["analyze", "--checkpoint", str(tiny_run), "--pictures", "pca,embeddings", "--embeddings", "tsne"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tiny_run / "analysis.json").read_text())
    assert set(report["pictures"]) == {"pca", "tsne"}
    assert f"pca: {tiny_run / 'analysis' / 'pca.png'}" in out and "DBI" in out and "erank" in out
    assert "RankMe" in out and "alpha-ReQ" in out
    code = main(["analyze", "--checkpoint", str(tiny_run), "--pictures", "pca,mosaic"])
    assert code == 2
    assert f"error: unknown picture(s) ['mosaic']; choose from {list(PICTURES)}" in capsys.readouterr().err


def test_joint_embedding_methods_get_every_picture_but_reconstructions(tmp_path):
    from mimreg.analysis.analyze import analyze
    from mimreg.config import config_to_dict, load_config
    from mimreg.engine.build import build_trainee

    cfg = load_config("digits/simclr", ["data.name=synthetic", "method.proj_hidden_dim=32", "method.proj_output_dim=16"])
    torch.save({"model": build_trainee(cfg, 10).state_dict(), "config": config_to_dict(cfg), "step": 0, "epoch": 0},
               tmp_path / "ckpt_00000000.pt")
    report = analyze(tmp_path, pictures=("reconstructions", "attention", "curves"), test_images=64,
                     echo=lambda text: None)
    assert set(report["pictures"]) == {"attention"}  # no pixels predicted, no metrics.jsonl logged


def test_pictures_are_titled_by_the_run_folder_and_the_data(tiny_run, monkeypatch):
    """Not by the preset's recipe (a Tiny-ImageNet run of a cifar10-cpu preset read `cifar10-cpu/mae`)."""
    from mimreg.analysis import analyze as module

    titles = {}
    monkeypatch.setattr(module, "plot_patch_pca", lambda *a, title: titles.setdefault("pca", title))
    monkeypatch.setattr(module, "plot_run_curves", lambda runs, path, title: titles.setdefault("curves", (title, *runs)))
    run = tiny_run.rename(tiny_run.parent / "tin-mae")
    report = module.analyze(run, pictures=("pca", "curves"), test_images=32, echo=lambda text: None)
    assert report["title"] == "tin-mae (synthetic)"
    assert titles == {"pca": "tin-mae (synthetic): patch features",
                      "curves": ("tin-mae (synthetic): training curves", "tin-mae (synthetic)")}
