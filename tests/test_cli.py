"""The `mimreg` command line, run in-process through `mimreg.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mimreg.cli import main
from mimreg.config import RECIPES_DIR, config_to_dict, load_config, preset_names, recipe_names
from mimreg.engine.checkpoint import list_checkpoints
from mimreg.eval.frozen import load_encoder
from mimreg.methods import METHODS
from mimreg.regularizers import REGULARIZERS

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = ["--set", "data.name=synthetic", "--set", "method.decoder_dim=32", "--set", "method.decoder_depth=1",
         "--set", "method.decoder_heads=2", "--set", "optim.batch_size=32", "--set", "train.device=cpu",
         "--set", "train.progress=false", "--set", "data.subset=64"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- recipes
def test_recipes_lists_recipes_presets_methods_and_regularizers(capsys):
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0 and err == ""
    lines = out.splitlines()
    for name in recipe_names():
        description = yaml.safe_load((RECIPES_DIR / "methods" / f"{name}.yaml").read_text())["description"]
        assert any(line.split()[:1] == [name] and description in line for line in lines), name
    for name in [*preset_names(), *METHODS, *REGULARIZERS]:
        assert any(line.split()[:1] == [name] for line in lines), name
    sections = [line for line in lines if not line.startswith(" ")]
    assert [s.split()[0] for s in sections] == ["recipes", "presets", "methods:", "regularizers:"]
    assert REGULARIZERS["magma"].paper in out and REGULARIZERS["uniformity"].paper in out


# ---------------------------------------------------------------- pretrain
def test_pretrain_from_a_yaml_file_then_halt_and_resume(tmp_path, capsys, tiny_config):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(tiny_config("u-mae", "data.subset=64", "train.epochs=2"))))
    out_dir = tmp_path / "run"

    code, out, err = run_cli(capsys, "pretrain", config_file, "--out", out_dir, "--set", "train.halt_after_steps=3")
    assert code == 0, err
    assert "halted at step 3 (train.halt_after_steps) with checkpoint" in out
    assert f"mimreg pretrain {config_file} --out {out_dir} --resume" in out
    assert [p.name for p in list_checkpoints(out_dir / "checkpoints")] == ["ckpt_00000002.pt", "ckpt_00000003.pt"]

    # a second start in the same folder is refused: one line on stderr, exit code 2
    code, out, err = run_cli(capsys, "pretrain", config_file, "--out", out_dir)
    assert code == 2
    assert err.splitlines() == [err.strip()] and err.startswith("error: run folder")
    assert "--resume" in err

    code, out, err = run_cli(capsys, "pretrain", config_file, "--out", out_dir, "--resume")
    assert code == 0, err
    assert f"resuming from {out_dir / 'checkpoints' / 'ckpt_00000003.pt'} at step 3" in out
    assert f"done: 4 steps; checkpoint {out_dir / 'checkpoints' / 'ckpt_00000004.pt'}" in out
    assert load_config(out_dir / "config.yaml") == load_config(config_file)


def test_pretrain_recipe_with_set_and_default_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "pretrain", "cifar10-cpu/m-mae", *SMALL, "--set", "train.epochs=2",
                             "--set", "regularizers.magma.weight=2", "--set", "data.num_workers=0")
    assert code == 0, err
    run = tmp_path / "runs" / "cifar10-cpu-m-mae"  # runs/<recipe with / as ->
    assert f"done: 4 steps; checkpoint {Path('runs/cifar10-cpu-m-mae/checkpoints/ckpt_00000004.pt')}" in out
    cfg = load_config(run / "config.yaml")
    assert cfg.recipe == "cifar10-cpu/m-mae" and cfg.data.name == "synthetic"
    magma = cfg.regularizers[0]
    # the cifar10-cpu preset's window (after the warm-up epoch, for 50% of the run) at 2 epochs
    assert (magma.weight, magma.start_epoch, magma.duration) == (2.0, 1, 1)


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "nope"], "error: unknown recipe 'nope'"),
    (["pretrain", "mae", "--set", "optim.bacth_size=64"], "error: config.optim: unknown key 'bacth_size'"),
    (["pretrain", "mae", "--set", "optim.blr=abc"], "error: config.optim.blr: expected a number, got 'abc'"),
    (["eval", "knn", "--checkpoint", "does/not/exist.pt"], "error: checkpoint does/not/exist.pt does not exist"),
    (["export", "--checkpoint", "missing_run_dir/ckpt_00000001.pt", "--out", "x.pth"], "error: checkpoint"),
])
def test_errors_print_one_line_and_exit_2(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(message), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(capsys):
    code, out, err = run_cli(capsys, "--debug", "pretrain", "mae", "--set", "optim.bacth_size=64")
    assert code == 2
    assert err.startswith("Traceback (most recent call last)")
    assert "mimreg.errors.ConfigError: config.optim: unknown key 'bacth_size'" in err
    assert "did you mean 'batch_size'" in err


def test_unexpected_errors_show_their_type_and_the_last_line(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Caught ValueError in DataLoader worker process 0.\nTraceback ...\nValueError: bad pixel")

    monkeypatch.setattr("mimreg.commands.analyze", broken)
    code, out, err = run_cli(capsys, "analyze", "--checkpoint", "somewhere")
    assert code == 2
    assert err.splitlines() == ["error: RuntimeError: ValueError: bad pixel",
                                "(run again with --debug for the traceback)"]


def test_interrupt_exits_130_with_a_hint(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mimreg.engine.loop.pretrain", interrupted)
    code, out, err = run_cli(capsys, "pretrain", "mae")
    assert code == 130
    assert "--resume" in err


def test_bad_arguments_exit_through_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "probe", "--checkpoint", "x"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- eval, export on a pretrained run
# (analyze: tests/analysis/test_analyze.py; demo: tests/test_demo.py)
def test_eval_linear(tiny_run, capsys):
    code, out, err = run_cli(capsys, "eval", "linear", "--checkpoint", tiny_run, "--epochs", "5")
    assert code == 0, err
    report = json.loads((tiny_run / "evals" / "linear-sweep_synthetic_cls_epochs5.json").read_text())
    assert report["protocol"] == "linear" and report["data"] == "synthetic" and report["variant"] == "sweep"
    assert (report["train_images"], report["test_images"]) == (512, 256)
    assert (report["step"], report["epoch"], report["recipe"]) == (24, 3, "digits/u-mae")
    result = report["result"]
    assert report["headline"] == {"linear-sweep": result["top1"]}
    assert result["epochs"] == 5 and result["num_classes"] == 10
    assert 0 <= result["top1"] <= result["top5"] <= 100
    assert result["top1"] > 50  # ten separable classes; chance is 10%
    assert "linear top1" in out and "cls" in out


def test_eval_on_a_full_disk_prints_its_result_then_one_line_naming_the_file(tiny_run, capsys, monkeypatch):
    import errno
    import os

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    code, out, err = run_cli(capsys, "eval", "linear", "--checkpoint", tiny_run, "--epochs", "5")
    target = tiny_run / "evals" / "linear-sweep_synthetic_cls_epochs5.json"
    err = "\n".join(line for line in err.splitlines() if not line.startswith("warning: "))  # the probe's own
    assert code == 2 and err.startswith("error: no space left on ") and f" writing {target} " in err
    assert len(err.strip().splitlines()) == 1 and not target.exists()
    header, rule, row = out.strip().splitlines()  # the result, printed before the write failed
    assert "linear top1" in header and row.split("|")[1].strip() == "cls"
    assert 50 < float(row.split("|")[2]) <= 100


def test_eval_skips_images_that_do_not_decode_when_asked(tiny_run, tmp_path, capsys):
    from PIL import Image

    for split, count in (("train", 3), ("test", 2)):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for j in range(count):
                colour = (j * 50, 100 if name == "a" else 0, 30)
                Image.new("RGB", (32, 32), colour).save(tmp_path / split / name / f"{j}.png")
    bad = tmp_path / "test" / "b" / "broken.png"
    bad.write_bytes(b"not a png")
    argv = ["eval", "erank", "--checkpoint", tiny_run, "--data", "imagefolder", "--data-root", tmp_path]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and f"{bad} could not be decoded" in err and "pass --skip-bad-images to mimreg eval" in err
    code, out, err = run_cli(capsys, *argv, "--skip-bad-images")
    assert code == 0, err
    assert f"warning: left out 1 test image(s) of imagefolder that do not decode, e.g. {bad}" in err
    report = json.loads((tiny_run / "evals" / "erank_imagefolder_cls.json").read_text())
    assert report["test_images"] == 4 and report["result"]["dim"] == 128


def test_eval_knn_with_both_pools(tiny_run, capsys):
    code, out, err = run_cli(capsys, "eval", "knn", "--checkpoint", tiny_run / "checkpoints" / "ckpt_00000016.pt",
                             "--pool", "cls", "--pool", "mean", "--test-images", "100")
    assert code == 0, err
    for pool in ("cls", "mean"):  # in the run folder, not in checkpoints/; an older checkpoint: its step named
        report = json.loads((tiny_run / "evals" / f"knn_synthetic_{pool}_step16_test100.json").read_text())
        assert report["step"] == 16 and report["test_images"] == 100 and report["pool"] == pool
        for key in ("knn10_euclidean", "knn20_euclidean_weighted", "knn20_cosine"):
            assert 30 < report["result"][key] <= 100
    assert not (tiny_run / "checkpoints" / "evals").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_loads_in_timm_and_gives_the_same_features(tiny_run, tmp_path, capsys, suffix):
    timm = pytest.importorskip("timm")
    out_file = tmp_path / "export" / f"encoder{suffix}"
    code, out, err = run_cli(capsys, "export", "--checkpoint", tiny_run, "--out", out_file)
    assert code == 0, err
    info = json.loads(out_file.with_suffix(".json").read_text())
    assert info["timm_model"] == "vit_base_patch16_224" and info["recipe"] == "digits/u-mae"
    assert info["kwargs"] == {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4,
                              "num_classes": 0}
    assert f"wrote {out_file}" in out and "timm.create_model('vit_base_patch16_224'" in out

    model = timm.create_model(info["timm_model"], pretrained=False, **info["kwargs"])
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        assert "safetensors.torch.load_file(PATH)" in info["usage"]
        model.load_state_dict(load_file(out_file), strict=True)
    else:
        model.load_state_dict(torch.load(out_file, weights_only=True), strict=True)
    model.double().eval()  # float64 on both sides: the same function, not fp32's rounding
    encoder, _, _ = load_encoder(tiny_run)
    encoder.double()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        theirs = model.forward_features(images)
        ours = encoder.forward_masked(images, None)
    torch.testing.assert_close(theirs, torch.cat([ours.cls[:, None], ours.tokens], dim=1), rtol=0, atol=1e-10)
    assert not torch.allclose(ours.cls[0], ours.cls[1])  # the features depend on the image


def test_version_prints_the_version(capsys):
    from mimreg import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"mimreg {__version__}\n"
