"""`mimreg eval lowshot` and `mimreg eval robustness` on a tiny pretrained MSN run, and the masked
feature extraction behind them (`embed_split(mask_ratio=...)`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mimreg.cli import main
from mimreg.commands import robustness
from mimreg.data import TransformedDataset, dataset_stats, eval_transform, load_dataset
from mimreg.eval.frozen import embed_split, load_encoder
from mimreg.models import random_mask

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = ["--set", "data.name=synthetic", "--set", "data.subset=64", "--set", "optim.batch_size=32",
         "--set", "train.epochs=1", "--set", "train.device=cpu", "--set", "train.progress=false",
         "--set", "data.focal_views=2", "--set", "method.proj_hidden_dim=64", "--set", "method.num_prototypes=64"]
SUBSETS = ["--train-images", "200", "--test-images", "64"]
SETTINGS = ["1_per_class", "2_per_class", "5_per_class", "1pct", "10pct"]
RATIOS = ["0.15", "0.3", "0.5", "0.7", "0.9"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def msn_run_dir(tmp_path_factory) -> Path:
    """`mimreg pretrain msn` for one epoch of 64 synthetic images (2 steps). Shared: do not modify."""
    run_dir = tmp_path_factory.mktemp("cli_msn") / "run"
    assert main(["pretrain", "msn", "--out", str(run_dir), *SMALL]) == 0
    return run_dir


def check_lowshot_entry(entry: dict, seeds: int = 3) -> None:
    assert set(entry) == {"mean", "std", "runs", "n_labelled"}
    assert len(entry["runs"]) == seeds
    assert all(0 <= r <= 100 for r in entry["runs"])
    assert entry["mean"] == pytest.approx(float(np.mean(entry["runs"])))
    assert entry["std"] == pytest.approx(float(np.std(entry["runs"])))  # population std over the seeds


def test_eval_lowshot_writes_shots_and_fractions(msn_run_dir, tmp_path, capsys):
    run = Path(shutil.copytree(msn_run_dir, tmp_path / "run"))
    code, out, err = run_cli(capsys, "eval", "lowshot", "--checkpoint", run, *SUBSETS)
    assert code == 0, err
    report = json.loads((run / "evals" / "lowshot_synthetic_cls_test64_train200.json").read_text())
    assert report["protocol"] == "lowshot" and report["data"] == "synthetic"
    assert (report["recipe"], report["step"]) == ("digits/msn", 2)
    assert (report["train_images"], report["test_images"]) == (200, 64)
    result = report["result"]
    assert list(result) == SETTINGS
    for key in SETTINGS:
        check_lowshot_entry(result[key])
    assert [result[k]["n_labelled"] for k in SETTINGS[:3]] == [10, 20, 50]  # 10 classes
    assert result["1pct"]["n_labelled"] == 10  # at least one per class
    assert 10 <= result["10pct"]["n_labelled"] <= 30
    assert result["5_per_class"]["mean"] > 20  # ten separable classes; chance is 10%
    for key in SETTINGS:
        assert f"lowshot {key}" in out


def test_eval_robustness_writes_similarities_and_masked_lowshot(msn_run_dir, tmp_path, capsys):
    run = Path(shutil.copytree(msn_run_dir, tmp_path / "run"))
    code, out, err = run_cli(capsys, "eval", "robustness", "--checkpoint", run, *SUBSETS)
    assert code == 0, err
    report = json.loads((run / "evals" / "robustness_synthetic_cls_test64_train200.json").read_text())
    assert (report["recipe"], report["data"], report["result"]["train_mask_ratio"]) == ("digits/msn", "synthetic", 0.7)
    similarity = report["result"]["cosine_similarity"]
    assert list(similarity) == RATIOS
    for ratio in RATIOS:
        assert -1.0 <= similarity[ratio]["mean"] <= 1.0 + 1e-6
        assert similarity[ratio]["std"] >= 0
    # dropping fewer patches keeps the representation closer to the unmasked one
    assert similarity["0.15"]["mean"] >= similarity["0.9"]["mean"]
    lowshot = report["result"]["lowshot_masked_train"]
    assert list(lowshot) == SETTINGS
    for key in SETTINGS:
        check_lowshot_entry(lowshot[key])
    assert "mask ratio" in out and "0.15" in out and "1_per_class" in out


def test_robustness_compares_masked_with_unmasked_features_of_the_same_images(msn_run_dir, tmp_path):
    report = robustness(msn_run_dir, ratios=(0.0, 0.5), train_images=100, test_images=32, out_dir=tmp_path,
                        echo=lambda *a: None)
    assert (tmp_path / "evals" / "robustness_synthetic_cls_test32_train100.json").is_file()
    assert report["cosine_similarity"]["0.0"]["mean"] == pytest.approx(1.0, abs=1e-6)  # no mask: identical
    encoder, _, _ = load_encoder(msn_run_dir)
    common = dict(img_size=32, pools=("cls",), max_images=32, seed=0)
    clean = embed_split(encoder, "synthetic", "test", None, **common)
    masked = embed_split(encoder, "synthetic", "test", None, mask_ratio=0.5, **common)
    cos = torch.nn.functional.cosine_similarity(masked.features["cls"], clean.features["cls"], dim=1)
    assert report["cosine_similarity"]["0.5"]["mean"] == pytest.approx(float(cos.mean()), rel=1e-6)
    assert float(cos.mean()) < 1.0


def test_embed_split_drops_a_seeded_random_mask_ratio_of_patches(msn_run_dir):
    encoder, _, _ = load_encoder(msn_run_dir)
    split = embed_split(encoder, "synthetic", "test", None, img_size=32, pools=("cls", "mean"), seed=3,
                        mask_ratio=0.75, batch_size=256)
    raw = load_dataset("synthetic", "test", None)
    data = TransformedDataset(raw, eval_transform(32, *dataset_stats("synthetic")), seed=3)
    images = torch.stack([data[i][0] for i in range(len(data))])
    noise = torch.rand(len(data), 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = encoder.forward_masked(images, random_mask(noise, 0.75).keep_ids)
    assert out.tokens.shape == (256, 16, 128)  # 25% of the 64 patches
    torch.testing.assert_close(split.features["cls"], out.cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.features["mean"], out.tokens.mean(dim=1), rtol=1e-5, atol=1e-5)
    assert torch.equal(split.labels, torch.tensor(np.array(raw.labels), dtype=torch.int64))
    again = embed_split(encoder, "synthetic", "test", None, img_size=32, pools=("cls",), seed=3, mask_ratio=0.75)
    torch.testing.assert_close(again.features["cls"], split.features["cls"])  # seeded


def test_protocol_variants_and_pools_keep_their_own_results_and_compare_in_one_table(tiny_run, capsys):
    small = ["--checkpoint", tiny_run, "--train-images", "200", "--test-images", "64"]
    for variant in ("magma", "mae", "sweep"):
        code, out, err = run_cli(capsys, "eval", "linear", *small, "--linear-protocol", variant, "--epochs", "3")
        assert code == 0, err
    code, out, err = run_cli(capsys, "eval", "knn", *small, "--pool", "cls_prenorm")
    assert code == 0, err
    heads = sorted(p.name for p in (tiny_run / "evals").glob("*.head.safetensors"))  # for export --format hf
    names = sorted(p.name for p in (tiny_run / "evals").glob("*.json"))
    assert names == ["knn_synthetic_cls-prenorm_test64_train200.json"] + [
        f"linear-{v}_synthetic_cls_epochs3_test64_train200.json" for v in ("mae", "magma", "sweep")]
    assert heads == [name.replace(".json", ".head.safetensors") for name in names[1:]]
    sweep = json.loads((tiny_run / "evals" / names[-1]).read_text())["result"]
    assert {"lr", "weight_decay", "heldout_top1", "train_top1", "train_loss", "grid"} <= set(sweep)

    code, out, err = run_cli(capsys, "results", tiny_run, tiny_run, "--format", "markdown")
    assert code == 0, err
    header, _, first, second = out.strip().splitlines()
    for column in ("linear-magma cls synthetic", "linear-sweep cls synthetic", "knn20_cosine cls_prenorm synthetic"):
        assert column in header
    assert "(+0.0)" in second and "(+" not in first  # the same run twice: no difference

    code, out, err = run_cli(capsys, "results", tiny_run / "nowhere")
    assert code == 2 and "does not exist" in err


def test_cls_prenorm_is_the_last_blocks_cls_token_before_the_final_norm(msn_run_dir):
    encoder, _, _ = load_encoder(msn_run_dir)  # MSN: its target encoder
    split = embed_split(encoder, "synthetic", "test", None, img_size=32, pools=("cls", "cls_prenorm"), max_images=16)
    prenorm = split.features["cls_prenorm"]
    with torch.no_grad():
        torch.testing.assert_close(encoder.vit.norm(prenorm), split.features["cls"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(prenorm, split.features["cls"])
    assert not encoder.vit.blocks[-1]._forward_hooks  # the hook is removed again


def test_eval_finetune_from_the_command_line(tiny_run, capsys):
    code, out, err = run_cli(capsys, "eval", "finetune", "--checkpoint", tiny_run, "--batch-size", "15")
    assert code == 2 and "even batch_size" in err and err.count("\n") == 1
    small = ["--checkpoint", tiny_run, "--epochs", "1", "--batch-size", "16", "--fraction", "0.125",
             "--test-images", "16", "--randaug", "none", "--clip-grad", "none", "--device", "cpu"]
    code, out, err = run_cli(capsys, "eval", "finetune", *small)
    assert code == 0, err
    name = "finetune_synthetic_gap_batch-size16_epochs1_fraction0.125_randaugnone_test-images16.json"
    report = json.loads((tiny_run / "evals" / name).read_text())
    settings = report["result"]["config"]["finetune"]
    assert (settings["randaug"], settings["clip_grad"], settings["layer_decay"]) == ("none", None, 0.75)
    assert f"wrote {tiny_run / 'evals' / name}" in out


@pytest.mark.slow  # a torchrun or job of ~15-20 s: make test-slow
def test_eval_finetune_under_torchrun_splits_the_batches_over_two_processes(tiny_run, torchrun):
    proc = torchrun(["-m", "mimreg.cli", "eval", "finetune", "--checkpoint", str(tiny_run), "--epochs", "2",
                     "--batch-size", "16", "--fraction", "0.25", "--test-images", "32", "--device", "cpu"], tiny_run)
    reports = list((tiny_run / "evals").glob("finetune_*.json"))
    assert len(reports) == 1 and proc.stdout.count("fine-tuned: top-1") == 1  # rank 0 reports, once
    result = json.loads(reports[0].read_text())["result"]
    assert result["processes"] == 2 and result["lr"] == pytest.approx(1e-3 * 16 * 2 / 256)
    assert result["steps"] == 2 * (result["finetune_images"] // 32) == 8  # global batches of 2 x 16
    assert [c["epoch"] for c in result["curves"]] == [1, 2] and 0 <= result["top1"] <= 100


@pytest.mark.slow
def test_eval_finetune_under_fsdp_halted_and_resumed_follows_the_ddp_run(tiny_run, torchrun, tmp_path):
    """The engine's strategies, halt and resume hold for fine-tuning too: 2 processes under FSDP,
    halted mid-epoch 2 and resumed, give the curves of the same fine-tuning under DDP."""
    common = ["-m", "mimreg.cli", "eval", "finetune", "--checkpoint", str(tiny_run), "--epochs", "2", "--batch-size",
              "16", "--fraction", "0.25", "--test-images", "32", "--device", "cpu", "--drop-path", "0"]
    torchrun([*common, "--out", str(tmp_path / "ddp")], tmp_path)
    ddp = json.loads(next((tiny_run / "evals").glob("finetune_*.json")).read_text())["result"]["curves"]
    fsdp = [*common, "--strategy", "fsdp", "--out", str(tmp_path / "fsdp")]
    halted = torchrun([*fsdp, "--halt-after-steps", "6"], tmp_path)
    assert "halted at step 6" in halted.stdout and "--resume" in halted.stdout
    torchrun([*fsdp, "--resume"], tmp_path)
    # the strategy changes no number, so the result has the same name: the FSDP run's replaces the DDP run's
    curves = json.loads(next((tiny_run / "evals").glob("finetune_*.json")).read_text())["result"]["curves"]
    assert [c["step"] for c in curves] == [c["step"] for c in ddp] == [4, 8]
    for a, b in zip(curves, ddp):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["top1"] == pytest.approx(b["top1"], abs=3.2)  # one of 32 test images may flip
