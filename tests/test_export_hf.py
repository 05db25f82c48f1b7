"""`mimreg export --format hf`: timm builds the model from the folder offline, with mimreg's
features and, after a linear evaluation, the probe's logits; the card says what the run was."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file

from mimreg.cli import main
from mimreg.data import dataset_stats, eval_transform, load_dataset
from mimreg.eval.evaluate import evaluate
from mimreg.eval.frozen import load_encoder
from mimreg.eval.heads import LinearHeads

pytestmark = pytest.mark.usefixtures("single_thread")
# timm reads a folder by its path (`local-dir:`) from 1.0.16; any timm 1.0 by the architecture + file
LOCAL_DIR = tuple(int(p) for p in timm.__version__.split(".")[:3]) >= (1, 0, 16)


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, tiny_config, single_thread):
    """MAE on vit_micro, 2 steps of 32 synthetic images."""
    from mimreg.engine.loop import pretrain

    run_dir = tmp_path_factory.mktemp("hf") / "run"
    pretrain(tiny_config("mae", train__epochs=1, data__subset=64), run_dir)
    return run_dir


def eval_images(count: int = 256) -> torch.Tensor:
    """The synthetic test split, eval-transformed (what `mimreg eval` embeds, in order)."""
    raw = load_dataset("synthetic", "test", None)
    transform = eval_transform(32, *dataset_stats("synthetic"))
    return torch.stack([transform(raw[i][0]) for i in range(count)])


def timm_models(out, config):
    """The folder's model as timm builds it offline, each way this timm can."""
    by_file = timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                                pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")))
    by_path = [timm.create_model(f"local-dir:{out}", pretrained=True)] if LOCAL_DIR else []
    return [m.double().eval() for m in [by_file, *by_path]]


def export(run_dir, out, capsys) -> str:
    assert main(["export", "--checkpoint", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_features_equal_mimreg_encoder_without_a_head(two_step_run, tmp_path, capsys):
    out = tmp_path / "hf"
    printed = export(two_step_run, out, capsys)
    assert "no head (no linear evaluation)" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 0 and config["architecture"] == "vit_base_patch16_224"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == list(dataset_stats("synthetic")[0])
    assert set(load_file(str(out / "model.safetensors"))) == set(load_encoder(two_step_run)[0].vit.state_dict())
    encoder = load_encoder(two_step_run)[0].double()
    images = eval_images(8).double()
    for model in timm_models(out, config):
        with torch.no_grad():
            torch.testing.assert_close(model(images), encoder.features(images, "cls"), rtol=1e-10, atol=1e-10)
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "recipe: `digits/mae`" in card and "MAE (He et al., CVPR 2022)" in card
    assert "steps: 2" in card and "None: the run has no linear evaluation" in card and "mimreg 0.1.0" in card


def test_logits_equal_the_linear_probe_after_an_evaluation(two_step_run, tmp_path, capsys):
    """The `mae` probe (BatchNorm in front, folded into timm's head) on the mean pool (timm 'avg')."""
    run = shutil.copytree(two_step_run, tmp_path / "run")
    done = evaluate(run, ("linear",), pools=("mean",), train_images=64, linear_protocol="mae", linear_epochs=5,
                    device="cpu", echo=lambda text: None)
    out = tmp_path / "hf"
    printed = export(run, out, capsys)
    assert "linear-mae_synthetic_mean" in printed
    config = json.loads((out / "config.json").read_text())
    assert (config["num_classes"], config["global_pool"]) == (10, "avg")
    model = timm_models(out, config)[-1]
    encoder = load_encoder(run)[0].double()
    images = eval_images()
    head = load_file(done["files"][0].replace(".json", ".head.safetensors"))
    with torch.no_grad():
        logits = model(images.double())
        features = encoder.features(images.double(), "mean")
        torch.testing.assert_close(model.forward_head(model.forward_features(images.double()), pre_logits=True),
                                   features, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits, features @ head["weight"].double().T + head["bias"].double())
    # the probe's own (BatchNorm then linear) accuracy on these 256 test images, from timm's logits
    top1 = 100.0 * (logits.argmax(1) == torch.tensor([label for _, label in load_dataset("synthetic", "test", None)]))
    assert top1.float().mean().item() == pytest.approx(done["results"]["linear"]["mean"]["top1"], abs=1e-6)
    card = (out / "README.md").read_text()
    assert "**linear-mae** on `synthetic`, pool `mean`" in card and '"protocol": "mae", "epochs": 5' in card
    assert "timm global_pool `avg`" in card


def test_the_folded_batchnorm_head_gives_the_heads_logits():
    torch.manual_seed(0)
    heads = LinearHeads(6, 3, [0.1], [0.0], momentum=0.9, batch_norm=True,
                        generator=torch.Generator().manual_seed(0), device="cpu")
    x, y = torch.randn(40, 6) * 3 + 1, torch.randint(0, 3, (40,))
    for _ in range(5):
        heads.train_step(x, y, 1.0)
    head = heads.raw_feature_head(0)
    torch.testing.assert_close(x @ head["weight"].T + head["bias"], heads.logits(x)[0], rtol=1e-5, atol=1e-5)
