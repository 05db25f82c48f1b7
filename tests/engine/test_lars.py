"""optim.name=lars: timm's Lars with solo-learn's rule (decayed weights take the trust ratio, biases,
norms and tokens a plain momentum-SGD step), its settings refused under adamw and the reverse, a
short BYOL run, and an exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mimreg.config import OptimConfig, config_to_dict, load_config
from mimreg.engine.checkpoint import load_checkpoint
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.engine.schedule import build_optimizer, param_groups, set_lr, set_weight_decay
from mimreg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- one step, by hand
def lars_step(opt: torch.optim.Optimizer, model: torch.nn.Linear, grads: tuple[torch.Tensor, torch.Tensor]):
    model.weight.grad, model.bias.grad = (g.clone() for g in grads)
    opt.step()


def trust(w: torch.Tensor, g: torch.Tensor, eta: float, wd: float) -> torch.Tensor:
    """solo-learn's lars_lr: eta |w| / (|g| + wd |w| + eps), eps 1e-8 as in timm and solo-learn."""
    return eta * w.norm() / (g.norm() + wd * w.norm() + 1e-8)


@pytest.mark.parametrize("clip", [False, True])
def test_two_lars_steps_follow_solo_learns_rule(clip):
    """Weight: d = trust x (g + wd w), clipped to trust / lr <= 1 with lars_clip; bias: d = g (no
    decay, no trust ratio); both through momentum 0.9: buf = 0.9 buf + d, w -= lr buf."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    eta, wd, lr = 0.02, 0.01, 0.5 if not clip else 1e-3  # at lr 1e-3 the clipped ratio is 1: SGD with decay
    opt = build_optimizer(param_groups(model, wd), OptimConfig(name="lars", weight_decay=wd, lars_eta=eta, lars_clip=clip))
    set_lr(opt, lr)
    grads = [(torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)) for _ in range(2)]

    w, b, w_buf, b_buf = w0, b0, torch.zeros_like(w0), torch.zeros_like(b0)
    for step, (gw, gb) in enumerate(grads):
        lars_step(opt, model, (gw, gb))
        ratio = trust(w, gw, eta, wd)
        if clip:
            ratio = torch.clamp(ratio / lr, max=1.0)
        d = ratio * (gw + wd * w)
        w_buf, b_buf = (d, gb) if step == 0 else (0.9 * w_buf + d, 0.9 * b_buf + gb)
        w, b = w - lr * w_buf, b - lr * b_buf
        torch.testing.assert_close(model.weight.detach(), w, rtol=1e-12, atol=0)
        torch.testing.assert_close(model.bias.detach(), b, rtol=1e-12, atol=0)
    if clip:  # the clip was in force: the unclipped ratio is far above 1 at this lr
        assert trust(w0, grads[0][0], eta, wd) / lr > 1


def test_weights_stay_adapted_while_the_decay_is_zero():
    """A decay schedule starting at 0 (or optim.weight_decay=0) leaves the decayed group's weight
    decay at 0: timm's Lars would then skip the trust ratio, unless the group always adapts."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    w0 = model.weight.detach().clone()
    opt = build_optimizer(param_groups(model, 0.04), OptimConfig(name="lars", weight_decay=0.04, lars_eta=0.02))
    set_weight_decay(opt, 0.0)
    set_lr(opt, 0.5)
    gw, gb = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    lars_step(opt, model, (gw, gb))
    torch.testing.assert_close(model.weight.detach(), w0 - 0.5 * trust(w0, gw, 0.02, 0.0) * gw, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- load
def test_lars_settings_are_filled_and_stated():
    cfg = config_to_dict(load_config("digits/byol", ["optim.name=lars", "optim.lars_eta=0.02"]))["optim"]
    assert (cfg["name"], cfg["lars_eta"], cfg["momentum"], cfg["lars_clip"], cfg["betas"]) == ("lars", 0.02, 0.9, False, None)
    cfg = config_to_dict(load_config("digits/byol"))["optim"]
    assert (cfg["name"], cfg["betas"], cfg["lars_eta"], cfg["momentum"]) == ("adamw", [0.9, 0.95], None, None)


@pytest.mark.parametrize("sets, message", [
    (["optim.name=lars", "optim.betas=[0.9,0.99]"], r"optim\.betas=\[0\.9, 0\.99\] is a setting of adamw, and optim\.name "
                                                    r"is lars; drop it \(--set optim\.betas=null\) or set optim\.name: adamw"),
    (["optim.lars_eta=0.02"], r"optim\.lars_eta=0\.02 is a setting of lars, and optim\.name is adamw; drop it "
                              r"\(--set optim\.lars_eta=null\) or set optim\.name: lars"),
    (["optim.momentum=0.9"], r"optim\.momentum=0\.9 is a setting of lars"),
    (["optim.lars_clip=true"], r"optim\.lars_clip=True is a setting of lars"),
    (["optim.name=sgd"], r"config\.optim\.name: unknown value 'sgd'; choose one of adamw, lars"),
    (["optim.name=lars", "optim.lars_eta=0"], r"config\.optim\.lars_eta=0\.0 is out of range: it must be > 0"),
])
def test_a_setting_of_the_other_optimizer_is_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits/byol", sets)


# ---------------------------------------------------------------- training
LARS_SETS = ("optim.name=lars", "optim.lr=1.0", "optim.lars_eta=0.02", "optim.lars_clip=true", "optim.weight_decay=1e-5",
             "optim.batch_size=16", "data.subset=64", "model.patch_size=8", "method.proj_hidden_dim=64",
             "method.proj_output_dim=32", "method.pred_hidden_dim=64", "train.device=cpu", "train.progress=false",
             "train.log_every=1", "train.online_probe=false", "train.knn_every=0", "train.monitor_every=1000")


def train_records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


def test_two_byol_steps_with_lars_move_each_weight_by_at_most_its_trust_bound(tmp_path):
    """solo-learn's CIFAR BYOL settings at lr 1 from the first step: a decayed weight moves by at
    most lr x eta x |w| per step's update (x 1.9 with the momentum of the first step), a bias by its
    plain SGD step; nothing leaves that bound nor turns non-finite."""
    cfg = load_config("digits/byol", [*LARS_SETS, "optim.warmup_epochs=0", "train.epochs=2",
                                      "train.ckpt_every_steps=1", "train.keep_last=3", "train.halt_after_steps=2"])
    result = pretrain(cfg, tmp_path / "run")
    assert result.steps == 2
    losses = [r["loss"] for r in train_records(tmp_path / "run")]
    assert len(losses) == 2 and all(0 <= loss < 8 for loss in losses)  # BYOL's 2 views x (2 - 2 cos) at most
    first, second = (load_checkpoint(tmp_path / "run" / "checkpoints" / f"ckpt_{s:08d}.pt") for s in (1, 2))
    assert first["optimizer"]["param_groups"][0]["always_adapt"] is True
    assert first["optimizer"]["param_groups"][1]["always_adapt"] is False
    moved = 0
    for key, w1 in first["model"].items():
        w2 = second["model"][key]
        assert torch.isfinite(w2).all(), key
        if key.startswith("method.encoder.") and w1.ndim > 1 and "pos_embed" not in key and "cls_token" not in key:
            step = (w2 - w1).norm() / w1.norm()
            assert step <= 1.0 * 0.02 * 1.9 * 1.01, (key, step)
            moved += bool(step > 0)
    assert moved > 10  # the encoder's weights did move


def test_resume_with_lars_reproduces_the_uninterrupted_run(tmp_path):
    """Halted after step 3 (its checkpoint holds the momentum buffers) and resumed: the records,
    the weights and the momentum buffers equal the run that was never stopped."""
    sets = [*LARS_SETS, "train.epochs=2", "optim.warmup_epochs=1"]  # 4 steps per epoch
    whole = pretrain(load_config("digits/byol", sets), tmp_path / "a")
    halted = pretrain(load_config("digits/byol", [*sets, "train.halt_after_steps=3"]), tmp_path / "b")
    assert (whole.steps, halted.steps, halted.halted) == (8, 3, True)
    resumed = pretrain(load_config("digits/byol", sets), tmp_path / "b", resume=True)
    assert resumed.steps == 8
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            want = pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value
            assert rb[key] == want, (rb["step"], key)
    final_a, final_b = load_checkpoint(whole.checkpoint), load_checkpoint(resumed.checkpoint)
    for key, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][key], value, rtol=0, atol=1e-6, msg=key)
    buffers = [(s["momentum_buffer"], final_b["optimizer"]["state"][i]["momentum_buffer"])
               for i, s in final_a["optimizer"]["state"].items()]
    assert buffers
    for want, got in buffers:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
