"""MI-MAE's one-way reconstruction-loss gate for regularizers, and the cosine weight-decay schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mimreg.config import OptimConfig, load_config
from mimreg.engine.build import build_trainee
from mimreg.engine.checkpoint import list_checkpoints, load_checkpoint
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.engine.schedule import build_optimizer, param_groups, set_weight_decay, weight_decay_at
from mimreg.engine.trainee import Trainee
from mimreg.errors import ConfigError
from mimreg.methods import MAE
from mimreg.methods.mae import MAEOptions
from mimreg.models import ViTEncoder
from mimreg.regularizers.magma import Magma, MagmaOptions
from mimreg.regularizers.uniformity import Uniformity, UniformityOptions

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["data.name=synthetic", "data.img_size=32", "model.arch=vit_micro", "method.decoder_dim=32",
        "method.decoder_depth=1", "method.decoder_heads=2", "optim.batch_size=32", "train.epochs=1",
        "train.device=cpu", "train.progress=false", "train.log_every=1", "train.monitor_every=1"]


def make_trainee(*regs) -> Trainee:
    torch.manual_seed(0)
    method = MAE(ViTEncoder("vit_micro", 32, 4), MAEOptions(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    return Trainee(method, list(regs), [])


def gated_uniformity(threshold: float | None, **kwargs) -> Uniformity:
    return Uniformity(UniformityOptions(), weight=0.01, gate_rec_loss=threshold, **kwargs)


# ---------------------------------------------------------------- the gate, driven directly
def test_update_gates_opens_each_gate_once_when_the_ema_falls_below_it():
    uni = gated_uniformity(0.9)
    magma = Magma(MagmaOptions(), weight=2.0, depth=6, gate_rec_loss=0.5)
    trainee = make_trainee(uni, magma)
    assert float(trainee.rec_ema) == -1.0  # no value yet
    assert not bool(uni.gate_open) and not bool(magma.gate_open)
    # EMA (decay 0.98) of 1, 0, 0, ...: 0.98^n after n zeros; 0.98^5 = 0.904 > 0.9 > 0.98^6 = 0.886 and
    # 0.98^34 = 0.503 > 0.5 > 0.98^35 = 0.493
    values = [1.0] + [0.0] * 40 + [100.0] * 5
    opened_at = {}
    for n, value in enumerate(values):
        opened = trainee.update_gates(torch.tensor(value))
        if n == 0:
            assert float(trainee.rec_ema) == 1.0  # the first value starts the EMA
        elif n <= 40:
            assert float(trainee.rec_ema) == pytest.approx(0.98**n, rel=1e-5)
        for event in opened:
            assert event["kind"] == "gate" and event["regularizer"] not in opened_at, "a gate opens only once"
            opened_at[event["regularizer"]] = n
            assert event["rec_ema"] == pytest.approx(0.98**n, rel=1e-5)
        assert uni.weight_at(0) == (0.01 if n >= 6 else 0.0)
        assert magma.weight_at(0) == (2.0 if n >= 35 else 0.0)
    assert opened_at == {"uniformity": 6, "magma": 35}
    # the EMA went back above both thresholds: the gates stay open (one way)
    assert float(trainee.rec_ema) > 1.0
    assert bool(uni.gate_open) and bool(magma.gate_open)


def test_gate_replaces_the_epoch_window():
    gated = gated_uniformity(1.0, start_epoch=3, duration=1)
    assert [gated.weight_at(e) for e in (0, 3, 10)] == [0.0, 0.0, 0.0]
    gated.gate_open.fill_(True)
    assert [gated.weight_at(e) for e in (0, 3, 10)] == [0.01, 0.01, 0.01]
    plain = gated_uniformity(None, start_epoch=3, duration=1)
    assert bool(plain.gate_open)
    assert [plain.weight_at(e) for e in (2, 3, 4)] == [0.0, 0.01, 0.0]


def test_closed_gate_is_only_monitored_and_opens_inside_the_forward():
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    closed = make_trainee(gated_uniformity(0.0)).train()  # an EMA never falls below 0
    assert closed.needs(0, monitor=False) == frozenset({"cls"})  # a closed gate may open in this step
    quiet = closed(images, epoch=0, monitor=False, noise=torch.rand(4, 64))
    assert set(quiet.terms) == {"rec"}
    assert quiet.total.item() == pytest.approx(quiet.terms["rec"].item())
    watched = closed(images, epoch=0, monitor=True, noise=torch.rand(4, 64))
    assert set(watched.terms) == {"rec", "monitor/uniformity"}
    assert watched.total.item() == pytest.approx(watched.terms["rec"].item())

    opening = make_trainee(gated_uniformity(1e9)).train()
    result = opening(images, epoch=0, monitor=False, noise=torch.rand(4, 64))
    assert set(result.terms) == {"rec", "reg/uniformity"}
    assert [e["regularizer"] for e in result.events] == ["uniformity"]
    assert result.events[0]["rec_ema"] == pytest.approx(result.terms["rec"].item())
    expected = result.terms["rec"].item() + 0.01 * result.terms["reg/uniformity"].item()
    assert result.total.item() == pytest.approx(expected, rel=1e-6)
    later = opening(images, epoch=0, monitor=False, noise=torch.rand(4, 64))
    assert later.events == [] and "reg/uniformity" in later.terms


def test_evaluation_mode_leaves_the_gate_alone():
    trainee = make_trainee(gated_uniformity(1e9)).eval()
    with torch.no_grad():
        trainee(torch.randn(2, 3, 32, 32), epoch=0, monitor=True)
    assert not bool(trainee.regularizers[0].gate_open) and float(trainee.rec_ema) == -1.0


def test_gate_state_is_in_the_state_dict():
    trainee = make_trainee(gated_uniformity(0.9))
    trainee.update_gates(torch.tensor(0.5))
    state = trainee.state_dict()
    assert bool(state["regularizers.0.gate_open"]) and float(state["rec_ema"]) == 0.5
    fresh = make_trainee(gated_uniformity(0.9))
    fresh.load_state_dict(state)
    assert bool(fresh.regularizers[0].gate_open) and float(fresh.rec_ema) == 0.5


def test_a_gate_opening_on_an_unmonitored_step_gets_its_features():
    trainee = make_trainee(Magma(MagmaOptions(), weight=1.0, depth=6, gate_rec_loss=1e9)).train()
    result = trainee(torch.randn(4, 3, 32, 32), epoch=0, monitor=False)
    assert "reg/magma" in result.terms


def test_gate_on_a_method_without_reconstruction_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="gate_rec_loss"):
        cfg = load_config("digits/simclr", ["data.name=synthetic", "optim.batch_size=4",
                                            "regularizers=[{name: uniformity, gate_rec_loss: 1.0}]"])
        trainee = build_trainee(cfg).train()
        trainee([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)], epoch=0)


# ---------------------------------------------------------------- the gate through pretrain
def gate_config(threshold: float, *sets: str):
    return load_config("digits/u-mae", [*TINY, "data.subset=256", "monitor=[]",
                                        f"regularizers.uniformity.gate_rec_loss={threshold}", *sets])


def train_records(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == kind]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """8 steps with a gate that never opens (training is the same as with any gate until it opens):
    the per-step rec values, their EMA, and a threshold that opens the gate at step s >= 2."""
    run_dir = tmp_path_factory.mktemp("gate") / "reference"
    pretrain(gate_config(0.0), run_dir)
    recs = [r["rec"] for r in train_records(run_dir)]
    assert len(recs) == 8
    ema = [recs[0]]
    for value in recs[1:]:
        ema.append(0.98 * ema[-1] + 0.02 * value)
    s = next((n for n in range(2, 6) if ema[n] < min(ema[:n]) - 1e-5), None)
    assert s is not None, f"the EMA never reaches a new low in steps 2..5: {ema}"
    return {"ema": ema, "step": s, "threshold": (ema[s] + min(ema[:s])) / 2, "dir": run_dir}


def test_gate_opens_at_its_step_is_logged_and_survives_a_resume(reference, tmp_path, capsys):
    s, threshold, ema = reference["step"], reference["threshold"], reference["ema"]
    sets = [f"train.ckpt_every_steps={s + 1}"]
    run_dir = tmp_path / "run"
    pretrain(gate_config(threshold, *sets, f"train.halt_after_steps={s + 2}"), run_dir)
    assert f"step {s}: uniformity switched on" in capsys.readouterr().out
    ckpt, halt = list_checkpoints(run_dir / "checkpoints")  # step s + 1 (after the gate opened), the halt's
    halt.unlink()  # as if killed after step s + 2: resume from step s + 1
    model = load_checkpoint(ckpt)["model"]
    assert bool(model["regularizers.0.gate_open"])
    assert float(model["rec_ema"]) == pytest.approx(ema[s], rel=1e-5)

    pretrain(gate_config(threshold, *sets), run_dir, resume=True)
    assert "switched on" not in capsys.readouterr().out  # the gate came back open
    gates = train_records(run_dir, "gate")
    assert len(gates) == 1
    assert (gates[0]["step"], gates[0]["regularizer"]) == (s, "uniformity")
    assert gates[0]["rec_ema"] == pytest.approx(ema[s], rel=1e-5)
    assert gates[0]["rec_ema"] < threshold

    train = train_records(run_dir)
    assert [r["step"] for r in train] == list(range(1, 9))
    for rec in train:  # record `step` k logs the forward of step k - 1
        is_open = rec["step"] > s
        assert rec["weight/uniformity"] == (0.01 if is_open else 0.0)
        assert ("reg/uniformity" in rec) == is_open
        assert ("monitor/uniformity" in rec) == (not is_open)
    # training before the gate opened is the reference run's; rec_ema carried on across the resume
    for rec, ref in zip(train[:s], train_records(reference["dir"])):
        assert rec["rec"] == pytest.approx(ref["rec"], rel=1e-6)
    recs = [r["rec"] for r in train]
    expected = recs[0]
    for value in recs[1:]:
        expected = 0.98 * expected + 0.02 * value
    final = load_checkpoint(run_dir)["model"]
    assert bool(final["regularizers.0.gate_open"])
    assert float(final["rec_ema"]) == pytest.approx(expected, rel=1e-5)


def test_resume_from_just_before_the_gate_opened_logs_it_once(reference, tmp_path):
    s, threshold = reference["step"], reference["threshold"]
    sets = [f"train.ckpt_every_steps={s}"]
    run_dir = tmp_path / "run"
    pretrain(gate_config(threshold, *sets, f"train.halt_after_steps={s + 1}"), run_dir)
    ckpt, halt = list_checkpoints(run_dir / "checkpoints")
    halt.unlink()  # as if killed after step s + 1: resume from step s
    assert not bool(load_checkpoint(ckpt)["model"]["regularizers.0.gate_open"])  # taken before it opened
    assert len(train_records(run_dir, "gate")) == 1
    pretrain(gate_config(threshold, *sets), run_dir, resume=True)
    assert len(train_records(run_dir, "gate")) == 1


# ---------------------------------------------------------------- weight-decay schedule
def test_weight_decay_at_endpoints_and_midpoint():
    kw = dict(start=0.04, end=0.4, total_steps=100)
    assert weight_decay_at(0, **kw) == pytest.approx(0.04)
    assert weight_decay_at(50, **kw) == pytest.approx(0.22)
    assert weight_decay_at(25, **kw) == pytest.approx(0.4 - 0.36 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert weight_decay_at(100, **kw) == pytest.approx(0.4)
    assert weight_decay_at(1000, **kw) == pytest.approx(0.4)  # clamped after the end
    values = [weight_decay_at(s, **kw) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert weight_decay_at(37, start=0.05, end=None, total_steps=100) == 0.05  # no end: constant
    assert weight_decay_at(0, start=0.05, end=0.01, total_steps=0) == pytest.approx(0.05)  # no division by 0


def test_set_weight_decay_changes_only_the_decay_group():
    trainee = make_trainee()
    optimizer = build_optimizer(param_groups(trainee, 0.04), OptimConfig(weight_decay=0.04))
    set_weight_decay(optimizer, 0.3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]


def test_weight_decay_schedule_starting_at_zero():
    trainee = make_trainee()
    optimizer = build_optimizer(param_groups(trainee, 0.0), OptimConfig(weight_decay=0.0, weight_decay_end=0.4))
    set_weight_decay(optimizer, 0.2)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]


def test_pretrain_follows_the_weight_decay_schedule(tmp_path):
    cfg = load_config("digits/mae", [*TINY, "data.subset=128", "optim.weight_decay=0.05", "optim.weight_decay_end=0.5",
                                     "train.ckpt_every_steps=1", "train.keep_last=10", "monitor=[]"])
    pretrain(cfg, tmp_path / "run")
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(checkpoints) == 4
    seen = []
    for path in checkpoints:
        state = load_checkpoint(path)
        decay, no_decay = state["optimizer"]["param_groups"]
        # the step that produced checkpoint k ran with the decay of step k - 1
        assert decay["weight_decay"] == pytest.approx(weight_decay_at(state["step"] - 1, start=0.05, end=0.5,
                                                                      total_steps=4))
        assert no_decay["weight_decay"] == 0.0
        seen.append(decay["weight_decay"])
    assert seen[0] == pytest.approx(0.05)
    assert seen == sorted(seen) and abs(seen[-1] - 0.5) < 0.2 * (0.5 - 0.05)  # close to the end value


def test_schedule_stretch_slows_the_cosine(tmp_path, tiny_config):
    """MSN's official 1.25 stretch: the lr cosine only reaches 80% of its period by the last step."""
    import json

    plain = pretrain(tiny_config("mae", "data.subset=256", "train.log_every=1", "optim.warmup_epochs=0"), tmp_path / "a")
    stretched = pretrain(tiny_config("mae", "data.subset=256", "train.log_every=1", "optim.warmup_epochs=0",
                                     "optim.schedule_stretch=1.25"), tmp_path / "b")
    lrs = [[json.loads(l)["lr"] for l in (r.run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(l).get("kind") == "train"] for r in (plain, stretched)]
    assert lrs[0][0] == pytest.approx(lrs[1][0])  # same start
    assert all(b >= a for a, b in zip(*lrs)) and lrs[1][-1] > lrs[0][-1]
