"""ResNet encoders (issue 16 §3): timm's ResNet-18/50 with the CIFAR stem, for the joint-embedding
methods and their regularizers; refused by the ViT-only methods at load; evaluated, analysed and
exported like a ViT."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from mimreg.config import load_config
from mimreg.engine.build import build_trainee
from mimreg.engine.loop import pretrain
from mimreg.engine.schedule import build_optimizer, param_groups
from mimreg.errors import ConfigError, MimregError
from mimreg.models import ResNetEncoder, use_cifar_stem

TINY_HEADS = ("method.proj_hidden_dim=32", "method.proj_output_dim=16")
JOINT = ("simclr", "vicreg", "byol", "barlow", "mse")
REGULARIZERS = {"none": [], "t-regs": [{"name": "mst", "features": ["emb.0", "emb.1"]}],
                "magma": [{"name": "magma", "start_epoch": 0}]}


def resnet_config(recipe: str, tiny_sets, *sets: str):
    base = [s for s in tiny_sets if not s.startswith(("method.", "model."))]
    heads = [*TINY_HEADS, *(("method.pred_hidden_dim=32",) if recipe.startswith("byol") else ())]
    return load_config(f"digits/{recipe}", [*base, "model.arch=resnet18", *heads, *sets])


@pytest.mark.parametrize("arch, stem, params", [("resnet18", "imagenet", 11_176_512),
                                                ("resnet18", "cifar", 11_168_832),  # 3x3 conv1: 9408 -> 1728
                                                ("resnet50", "imagenet", 23_508_032)])
def test_parameter_counts_are_timms_without_the_fc(arch, stem, params):
    encoder = ResNetEncoder(arch, 32, stem)
    assert sum(p.numel() for p in encoder.parameters()) == params  # ResNet-18 ~11.2M, ResNet-50 ~23.5M
    assert encoder.embed_dim == {"resnet18": 512, "resnet50": 2048}[arch] and encoder.depth == 4


@pytest.mark.parametrize("img_size, stem", [(32, "cifar"), (64, "cifar"), (96, "imagenet"), (224, "imagenet")])
def test_auto_stem_is_cifar_up_to_64_px(img_size, stem):
    encoder = ResNetEncoder("resnet18", img_size)
    assert encoder.stem == stem
    conv = encoder.resnet.conv1
    assert (conv.kernel_size, conv.stride) == (((3, 3), (1, 1)) if stem == "cifar" else ((7, 7), (2, 2)))
    assert isinstance(encoder.resnet.maxpool, torch.nn.Identity) == (stem == "cifar")


def test_features_are_timms_pooled_output_and_pooled_stages():
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18", 32).double().eval()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    out = encoder.forward_masked(images, None, [0, 2, 3])
    assert sorted(out.pooled_blocks) == [0, 2, 3]
    widths = {i: x.shape for i, x in out.pooled_blocks.items()}
    assert widths == {0: (3, 64), 2: (3, 256), 3: (3, 512)}
    torch.testing.assert_close(out.cls, encoder.resnet(images), rtol=1e-12, atol=1e-12)  # timm's own forward
    torch.testing.assert_close(out.pooled_blocks[3], out.cls, rtol=0, atol=0)
    stage1 = encoder.resnet.layer1(encoder.resnet.act1(encoder.resnet.bn1(encoder.resnet.conv1(images))))
    torch.testing.assert_close(out.pooled_blocks[0], stage1.mean(dim=(2, 3)), rtol=1e-12, atol=1e-12)
    assert out.tokens.shape == (3, 4 * 4, 512)  # 32 px through the CIFAR stem: 4x4 after layer4
    assert encoder.block_index(-2) == 2


def test_a_masked_forward_is_refused():
    encoder = ResNetEncoder("resnet18", 32)
    with pytest.raises(ConfigError, match="resnet18 cannot encode a masked image.*need a vit_"):
        encoder.forward_masked(torch.randn(1, 3, 32, 32), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="feature pool 'mean' is for ViT encoders"):
        encoder.features(torch.randn(1, 3, 32, 32), "mean")


@pytest.mark.parametrize("recipe, method", [("mae", "mae"), ("simmim", "simmim"), ("msn", "msn"),
                                            ("mi-mae", "mae"), ("u-mae", "mae")])
def test_vit_only_methods_refuse_a_resnet_at_load(recipe, method):
    with pytest.raises(ConfigError) as err:
        load_config(f"digits/{recipe}", ["model.arch=resnet18"])
    assert str(err.value).startswith(f"method {method} needs a ViT encoder (model.arch vit_*); resnet18 has no patches")


def test_model_keys_of_the_other_encoder_are_refused():
    """A setting a user gives is in force or refused: a ResNet has no patch size, a ViT no stem;
    a preset's patch size is a ViT default, not a setting the ResNet refuses."""
    cfg = load_config("cifar10-cpu/byol+t-regs", ["model.arch=resnet18"])
    assert (cfg.model.arch, cfg.model.patch_size, cfg.model.stem) == ("resnet18", None, "auto")
    assert load_config("cifar10-cpu/byol+t-regs").model.patch_size == 4
    with pytest.raises(ConfigError, match=r"^model.patch_size=4: resnet18 has no patches; drop model.patch_size"):
        load_config("cifar10-cpu/byol", ["model.arch=resnet18", "model.patch_size=4"])
    with pytest.raises(ConfigError, match=r"^model.stem='cifar' is for resnet archs"):
        load_config("cifar10-cpu/byol", ["model.stem=cifar"])
    with pytest.raises(ConfigError, match="model.stem"):
        load_config("cifar10-cpu/byol", ["model.arch=resnet18", "model.stem=tiny"])


def test_cifar_recipe_with_a_resnet_builds_the_cifar_stem_encoder():
    cfg = load_config("cifar10-cpu/byol+t-regs", ["model.arch=resnet18"])
    trainee = build_trainee(cfg, num_classes=10)
    encoder = trainee.method.encoder
    assert isinstance(encoder, ResNetEncoder) and encoder.stem == "cifar"
    assert isinstance(trainee.method.target_encoder, ResNetEncoder)
    assert trainee.method.feature_names() == {"cls", "emb.0", "emb.1", "block.0", "block.1", "block.2", "block.3"}


def test_batch_norm_and_biases_get_no_weight_decay():
    """As for the ViT's norms and biases (timm's rule): 1-D parameters are not decayed."""
    encoder = ResNetEncoder("resnet18", 32)
    decay, no_decay = param_groups(encoder, 0.05)
    decayed = {id(p) for p in decay["params"]}
    for name, p in encoder.named_parameters():
        is_bn = ".bn" in name or name.startswith("resnet.bn") or ".downsample.1." in name
        assert (id(p) in decayed) == (not is_bn and p.ndim > 1), name
    assert len(no_decay["params"]) == 2 * 20  # weight and bias of ResNet-18's 20 BatchNorm layers


@pytest.mark.parametrize("reg", sorted(REGULARIZERS))
@pytest.mark.parametrize("method", JOINT)
def test_every_joint_method_and_regularizer_trains_on_resnet18(method, reg, tiny_sets):
    cfg = resnet_config(method, tiny_sets, f"regularizers={json.dumps(REGULARIZERS[reg])}")
    torch.manual_seed(0)
    trainee = build_trainee(cfg, num_classes=0)
    if reg == "magma":  # MAGMA's ResNet variant: layer3 pooled as reference, the pooled output regularized
        assert trainee.needs(0, False) == {"block.2", "block.3"}
    optimizer = build_optimizer(param_groups(trainee, 0.05), cfg.optim)
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    before = trainee.method.encoder.resnet.layer3[0].conv1.weight.detach().clone()
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    losses = []
    for _ in range(2):
        step = trainee(views)
        optimizer.zero_grad()
        step.total.backward()
        optimizer.step()
        losses.append(step.objective.item())
        assert all(torch.isfinite(v).all() for v in step.terms.values()), step.terms
    if reg != "none":
        assert f"reg/{REGULARIZERS[reg][0]['name']}" in step.terms
    assert all(abs(v) < 1e4 for v in losses), losses
    assert not torch.equal(before, trainee.method.encoder.resnet.layer3[0].conv1.weight)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, tiny_sets):
    """A BYOL ResNet-18 run of 2 steps on 32-px synthetic images (its checkpoint, run folder), RankMe /
    alpha-ReQ measured after each."""
    out = tmp_path_factory.mktemp("resnet") / "run"
    cfg = resnet_config("byol", tiny_sets, "optim.batch_size=4", "data.subset=8", "optim.warmup_epochs=0",
                        "train.knn_bank=16", "train.knn_queries=16", "train.rep_monitor_every=1",
                        "train.rep_monitor_images=16")
    pretrain(cfg, out)
    return out


def test_frozen_evaluations_on_a_resnet_checkpoint(resnet_run):
    from mimreg.commands import evaluate

    run = evaluate(resnet_run, ("linear", "knn"), train_images=32, test_images=16, linear_epochs=2,
                   device="cpu", echo=lambda *_: None)
    assert 0 <= run["results"]["linear"]["cls"]["top1"] <= 100
    assert run["results"]["knn"]["cls"]
    with pytest.raises(MimregError, match=r"feature pool\(s\) \['mean'\] are for ViT encoders; resnet18 has 'cls'"):
        evaluate(resnet_run, ("knn",), pools=("cls", "mean"), train_images=8, test_images=8, device="cpu",
                 echo=lambda *_: None)


def test_the_representation_monitor_reads_a_resnets_pooled_output_and_projector(resnet_run):
    from mimreg.engine.metrics import read_metrics

    rep = [r for r in read_metrics(resnet_run / "metrics.jsonl") if r["kind"] == "rep"]
    assert [r["step"] for r in rep] == [1, 2]
    # no `mean`: a ResNet's pooled output is its cls; 16 images give ranks 6..15 for alpha
    assert all({k for k in r if "/" in k} == {"rankme/cls", "alpha_req/cls", "rankme/emb", "alpha_req/emb"} for r in rep)


def test_export_loads_into_timm_and_gives_the_same_pooled_features(resnet_run, tmp_path):
    from mimreg.commands import export_timm
    from mimreg.eval.frozen import load_encoder

    info = export_timm(resnet_run, tmp_path / "resnet.pth")
    assert (info["timm_model"], info["stem"]) == ("resnet18", "cifar")
    assert "use_cifar_stem(timm.create_model('resnet18', pretrained=False, num_classes=0))" in info["usage"]
    model = use_cifar_stem(timm.create_model("resnet18", pretrained=False, num_classes=0))
    model.load_state_dict(torch.load(tmp_path / "resnet.pth"))  # strict: every key, every shape
    encoder, _, _ = load_encoder(resnet_run)
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    ours = encoder.double().forward_masked(images, None).cls
    theirs = model.double().eval()(images)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-10 * ours.abs().max().item())


def test_analyze_skips_the_vit_pictures_with_a_note(resnet_run, monkeypatch):
    from mimreg.analysis import analyze as module

    monkeypatch.setattr(module, "SAMPLE_PER_CLASS", 2)
    lines = []
    payload = module.analyze(resnet_run, pictures=("attention", "pca", "spectrum"), test_images=16, device="cpu",
                             echo=lines.append)
    assert payload["skipped"] == {"attention": "resnet18 has no attention and no patches",
                                  "pca": "resnet18 has no attention and no patches"}
    assert set(payload["pictures"]) == {"spectrum"} and set(payload["effective_rank"]) == {"cls"}
    assert "attention skipped: resnet18 has no attention and no patches" in lines


def test_fine_tuning_refuses_a_resnet_before_it_starts(resnet_run):
    from mimreg.eval.finetune_config import resolve_config
    from mimreg.eval.finetune_model import build_classifier
    from mimreg.eval.frozen import load_encoder

    message = r"^fine-tuning builds a ViT classifier; this checkpoint's encoder is resnet18: evaluate it with"
    with pytest.raises(ConfigError, match=message):
        resolve_config("resnet18", 4, {})
    with pytest.raises(ConfigError, match=message):
        build_classifier(load_encoder(resnet_run)[0], 10, "gap", 0.0)


def test_hf_export_refuses_the_cifar_stem_and_writes_nothing(resnet_run, tmp_path):
    """timm's config.json cannot say "3x3 first convolution, no max-pool": a hub folder of this run
    would load as a different network, so `--format hf` refuses it and names --format timm."""
    from mimreg.hub_export import export_hf

    with pytest.raises(MimregError, match=r"resnet18 has the CIFAR stem .* export it with --format timm"):
        export_hf(resnet_run, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()
