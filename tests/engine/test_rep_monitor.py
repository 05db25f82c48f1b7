"""The representation monitor: its values, its fixed batch, its records in a run (steps, off, training
unchanged, resume)."""

import pytest
import torch

from mimreg.config import config_to_dict, load_config
from mimreg.engine import rep_monitor as monitor_module
from mimreg.engine.build import build_trainee
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.engine.rep_monitor import RepMonitor
from mimreg.engine.resume_rules import resume_changes
from mimreg.errors import ConfigError, DataError
from mimreg.spectra import alpha_req, rankme

from support import MeanColour

pytestmark = pytest.mark.usefixtures("single_thread")



class Holder(torch.nn.Module):
    eval_encoder = "encoder"

    def __init__(self):
        super().__init__()
        self.encoder = MeanColour()


def test_values_are_the_spectra_of_the_eval_mode_features_and_rng_is_untouched():
    images = torch.randn(50, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 1.0, 0.2])[:, None, None]
    monitor = RepMonitor(images, every=1, split="test", batch_size=7)
    holder = Holder().train()
    before = torch.get_rng_state()
    values = monitor.measure(holder)
    features = images.mean(dim=(2, 3))  # no dropout: eval mode
    assert values == {"rankme/cls": pytest.approx(rankme(features), rel=1e-6)}  # D=3 < 6 ranks: no alpha
    assert holder.encoder.training and torch.equal(torch.get_rng_state(), before)
    assert 1 < values["rankme/cls"] < 3


def test_a_joint_method_adds_its_projector_embedding_and_a_vit_the_mean_token():
    cfg = load_config("digits/simclr", ["data.name=synthetic", "model.arch=vit_micro", "method.proj_output_dim=64",
                                        "train.rep_monitor_images=40"])
    monitor = RepMonitor.from_config(cfg)
    method = build_trainee(cfg).method.train()
    values = monitor.measure(method)
    assert sorted(values) == sorted(f"{m}/{f}" for m in ("rankme", "alpha_req") for f in ("cls", "mean", "emb"))
    assert method.projector.training and method.encoder.training
    method.eval()
    with torch.no_grad():
        emb = method.projector(method.encoder.forward_masked(monitor.images, None).cls)
    assert values["alpha_req/emb"] == pytest.approx(alpha_req(emb), rel=1e-5)


def test_the_batch_is_fixed_by_the_seed_from_the_test_split_else_the_pretraining_pool(tiny_config, monkeypatch):
    cfg = tiny_config(train__rep_monitor_every=7, train__rep_monitor_images=48)
    first, again = RepMonitor.from_config(cfg), RepMonitor.from_config(cfg)
    assert first.facts() == {"every": 7, "images": 48, "split": "test"}
    assert first.images.shape == (48, 3, 32, 32) and torch.equal(first.images, again.images)
    other = tiny_config(train__rep_monitor_every=7, train__rep_monitor_images=48, train__seed=1)
    assert not torch.equal(first.images, RepMonitor.from_config(other).images)
    whole = tiny_config(train__rep_monitor_every=7, train__rep_monitor_images=10_000)
    assert len(RepMonitor.from_config(whole).images) == 256  # the whole test split
    assert RepMonitor.from_config(tiny_config(train__rep_monitor_every=0)) is None
    real = monitor_module.load_dataset

    def no_test_split(name, split, root, **options):
        if split == "test":
            raise DataError("no test split")
        return real(name, split, root, **options)

    monkeypatch.setattr(monitor_module, "load_dataset", no_test_split)
    pool = RepMonitor.from_config(cfg)
    assert pool.facts()["split"] == "pretrain" and pool.images.shape == (48, 3, 32, 32)


def records_of(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def on_and_off(tmp_path_factory, tiny_config):
    """An 8-step u-mae run (drop path, a regularizer, a monitor, the probe) measured every 3 steps, and
    the same run with the monitor off."""
    sets = dict(data__subset=128, optim__batch_size=16, model__drop_path=0.1, train__rep_monitor_images=64,
                train__knn_every=0)
    runs = {}
    for name, every in (("on", 3), ("off", 0)):
        runs[name] = tmp_path_factory.mktemp(name) / "run"
        pretrain(tiny_config("u-mae", train__rep_monitor_every=every, **sets), runs[name])
    return runs, sets


def test_records_at_every_nth_step_and_the_last_and_none_when_off(on_and_off):
    runs, _ = on_and_off
    on, off = records_of(runs["on"]), records_of(runs["off"])
    rep = [r for r in on if r["kind"] == "rep"]
    assert [r["step"] for r in rep] == [3, 6, 8]
    keys = {f"{m}/{f}" for m in ("rankme", "alpha_req") for f in ("cls", "mean")}
    assert all(set(r) == {"kind", "step", "epoch"} | keys for r in rep)
    assert all(1 <= r["rankme/cls"] <= 64 and 0 < r["alpha_req/cls"] < 20 for r in rep)
    assert on[0]["rep_monitor"] == {"every": 3, "images": 64, "split": "test"}
    assert not [r for r in off if r["kind"] == "rep"] and "rep_monitor" not in off[0]
    # the training itself is unchanged: every other record, losses included, is equal
    assert [r for r in on if r["kind"] not in ("rep", "start")] == [r for r in off if r["kind"] not in ("rep", "start")]


def test_a_resumed_run_writes_the_records_of_the_uninterrupted_one(on_and_off, tiny_config, tmp_path):
    runs, sets = on_and_off
    run = tmp_path / "run"
    pretrain(tiny_config("u-mae", train__rep_monitor_every=3, train__halt_after_steps=4, **sets), run)
    assert [r["step"] for r in records_of(run) if r["kind"] == "rep"] == [3]
    pretrain(tiny_config("u-mae", train__rep_monitor_every=3, **sets), run, resume=True)
    got, want = records_of(run), records_of(runs["on"])
    assert [(r["kind"], r.get("step")) for r in got] == [(r["kind"], r.get("step")) for r in want]
    for a, b in zip(got, want):  # as the fault tests compare: numbers to float round-off, the rest exactly
        numbers = {k for k, v in b.items() if isinstance(v, float)}
        assert {k: v for k, v in a.items() if k not in numbers} == {k: v for k, v in b.items() if k not in numbers}
        assert {k: a[k] for k in numbers} == pytest.approx({k: b[k] for k in numbers}, rel=1e-6, abs=1e-7)


def test_a_resume_may_change_how_often_it_measures_but_not_on_what(tiny_config):
    saved = config_to_dict(tiny_config(train__rep_monitor_every=3))
    assert resume_changes(saved, config_to_dict(tiny_config(train__rep_monitor_every=50)), saved_world=1, world=1) == {}
    other_batch = config_to_dict(tiny_config(train__rep_monitor_every=3, train__rep_monitor_images=64))
    with pytest.raises(ConfigError, match=r"differ from the run's own in \['train.rep_monitor_images'\]"):
        resume_changes(saved, other_batch, saved_world=1, world=1)
