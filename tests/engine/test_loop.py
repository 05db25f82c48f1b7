"""The training loop on tiny synthetic runs: outputs, exact resume, guards, monitors, accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mimreg.config import config_to_dict, load_config
from mimreg.engine import loop, pretrain_task
from mimreg.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from mimreg.engine.loop import Trainer, pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.engine.schedule import lr_at
from mimreg.errors import ConfigError, DataError, MimregError, NonFiniteLossError
from mimreg.methods.mae import MAE
from mimreg.models import patchify
from mimreg.regularizers.uniformity import Uniformity

pytestmark = pytest.mark.usefixtures("single_thread")


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == kind]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def assert_records_equal(got: list[dict], want: list[dict], rel: float = 1e-6) -> None:
    assert [r.get("step") for r in got] == [r.get("step") for r in want]
    for a, b in zip(without_time(got), without_time(want)):
        assert set(a) == set(b), (a.get("step"), set(a) ^ set(b))
        for key in a:
            if isinstance(a[key], str):
                assert a[key] == b[key]
                continue
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), (a.get("step"), key, a[key], b[key])


# ---------------------------------------------------------------- a finished run and its outputs
def test_short_run_lowers_the_reconstruction_loss(tiny_run_dir):
    train = records(tiny_run_dir)
    assert [r["step"] for r in train] == list(range(2, 25, 2))  # log_every=2 over 3 epochs x 8 steps
    first, last = train[0]["rec"], train[-1]["rec"]
    assert last < 0.8 * first, (first, last)
    epochs = records(tiny_run_dir, "epoch")
    assert [(r["epoch"], r["step"]) for r in epochs] == [(0, 8), (1, 16), (2, 24)]
    assert epochs[-1]["rec"] < epochs[0]["rec"]


def test_run_folder_outputs(tiny_run_dir):
    cfg = load_config(tiny_run_dir / "config.yaml")
    assert cfg.recipe == "digits/u-mae" and cfg.train.epochs == 3 and cfg.data.subset == 256

    start = records(tiny_run_dir, "start")
    assert len(start) == 1
    assert start[0]["images"] == 256 and start[0]["steps_per_epoch"] == 8 and start[0]["total_steps"] == 24
    assert start[0]["lr"] == 1e-3  # the digits preset sets an absolute lr
    assert start[0]["lr_source"] == "optim.lr=0.001"
    assert (start[0]["img_size"], start[0]["patch_grid"], start[0]["tokens"]) == (32, [8, 8], 64)

    for rec in records(tiny_run_dir):
        # every loss term, the regularizer weight and the monitored regularizer on each record
        assert {"lr", "loss", "rec", "reg/uniformity", "weight/uniformity", "monitor/magma", "probe/ce",
                "probe/acc", "epoch", "time"} <= set(rec), rec
        assert rec["weight/uniformity"] == 0.01
        assert rec["lr"] == pytest.approx(lr_at(rec["step"] - 1, base_lr=1e-3, min_lr=0.0, warmup_steps=8,
                                                total_steps=24))
        # the objective that trains the encoder; the online probe's cross-entropy is logged apart
        assert rec["loss"] == pytest.approx(rec["rec"] + 0.01 * rec["reg/uniformity"], rel=1e-5)
        assert 0.0 <= rec["probe/acc"] <= 100.0
        assert rec["epoch"] == (rec["step"] - 1) // 8
        assert all(isinstance(v, (int, float)) and v == v for k, v in rec.items() if k != "kind")

    summary = json.loads((tiny_run_dir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["halted"] is False
    assert summary["checkpoint"] == str(tiny_run_dir / "checkpoints" / "ckpt_00000024.pt")
    last = {k: v for k, v in records(tiny_run_dir)[-1].items()
            if k not in ("kind", "step", "epoch", "lr", "time") and not k.startswith("weight/")}
    assert summary["last_metrics"] == pytest.approx(last)

    ckpts = list_checkpoints(tiny_run_dir / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt_00000016.pt", "ckpt_00000024.pt"]  # keep_last 2
    assert not list((tiny_run_dir / "checkpoints").glob("*.tmp"))
    state = load_checkpoint(ckpts[-1])
    assert (state["step"], state["epoch"]) == (24, 3)
    assert state["config"] == config_to_dict(cfg)
    assert any(k.startswith("method.encoder.vit.blocks.5.") for k in state["model"])
    assert "probe.weight" in state["model"]


# ---------------------------------------------------------------- exact resume
RESUME_SETS = ("regularizers.magma.start_epoch=1", "train.epochs=2", "data.subset=256", "train.monitor_every=3",
               "train.log_every=1", "train.keep_last=3")


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory, tiny_config, single_thread):
    """run(drop_path, ckpt_every, halt, crash) -> (folder, halted result, resumed result): mu-mae for 2
    epochs of 8 steps, with magma switching on at epoch 1; uninterrupted when halt is None, else halted
    after step `halt` (which writes a checkpoint) and resumed. With `crash` the halt's checkpoint and
    summary are deleted first, leaving what a kill -9 after that step leaves: records up to the step,
    checkpoints only from before it. Runs are cached for the module."""
    root = tmp_path_factory.mktemp("resume")
    cache: dict[tuple, tuple[Path, object, object]] = {}

    def run(drop_path: float, ckpt_every: int, halt: int | None = None, crash: bool = False):
        key = (drop_path, ckpt_every, halt, crash)
        if key not in cache:
            folder = root / "_".join(map(str, key))
            sets = (*RESUME_SETS, f"model.drop_path={drop_path}", f"train.ckpt_every_steps={ckpt_every}")
            if halt is None:
                cache[key] = (folder, None, pretrain(tiny_config("mu-mae", *sets), folder))
            else:
                halted = pretrain(tiny_config("mu-mae", *sets, f"train.halt_after_steps={halt}"), folder)
                if crash:
                    halted.checkpoint.unlink()
                    (folder / "summary.json").unlink()
                resumed = pretrain(tiny_config("mu-mae", *sets), folder, resume=True)
                cache[key] = (folder, halted, resumed)
        return cache[key]

    return run


def assert_same_run(run_b: Path, run_a: Path) -> None:
    # records after the checkpoint were dropped on resume and written again: one record per step
    assert_records_equal(records(run_b), records(run_a))
    assert [r["step"] for r in records(run_b)] == list(range(1, 17))
    assert len(records(run_b, "start")) == 1
    final_a = load_checkpoint(run_a / "checkpoints" / "ckpt_00000016.pt")
    final_b = load_checkpoint(run_b / "checkpoints" / "ckpt_00000016.pt")
    assert final_a["model"].keys() == final_b["model"].keys()
    for key, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][key], value, rtol=0, atol=1e-6, msg=key)
    for a, b in zip(final_a["optimizer"]["state"].values(), final_b["optimizer"]["state"].values()):
        torch.testing.assert_close(b["exp_avg"], a["exp_avg"], rtol=0, atol=1e-7)


@pytest.mark.parametrize("drop_path, ckpt_every, halt, crash", [
    (0.1, 0, 13, True),  # killed in epoch 1, resumed from the end-of-epoch-0 checkpoint (drop path uses torch's RNG)
    pytest.param(0.0, 3, 13, True, marks=pytest.mark.slow),  # killed in epoch 1, resumed from the mid-epoch checkpoint of step 12
    (0.1, 3, 13, False),  # halted mid-epoch: resumed from the halt's own checkpoint
    pytest.param(0.0, 4, 8, False, marks=pytest.mark.slow),  # halted at the epoch's last step, where a step checkpoint is also due
    (0.0, 4, 8, True),  # killed after the epoch's last step: resumed from step 4
])
def test_resume_reproduces_every_record_of_the_uninterrupted_run(resume_runs, drop_path, ckpt_every, halt, crash):
    run_a, _, _ = resume_runs(drop_path, ckpt_every)
    run_b, halted, resumed = resume_runs(drop_path, ckpt_every, halt, crash)
    assert halted.halted and halted.steps == halt
    assert halted.checkpoint == run_b / "checkpoints" / f"ckpt_{halt:08d}.pt"
    assert json.loads((run_b / "summary.json").read_text())["halted"] is False
    assert not resumed.halted and resumed.steps == 16
    assert_same_run(run_b, run_a)
    # every record, of every kind, equals the uninterrupted run's (time aside)
    kinds = {r["kind"] for r in read_metrics(run_a / "metrics.jsonl")}
    assert kinds >= {"start", "train", "epoch"}
    for kind in kinds:
        assert_records_equal(records(run_b, kind), records(run_a, kind))
    # the regularizer window switched on at epoch 1 in both
    assert records(run_b)[8]["weight/magma"] == 1.0 and records(run_b)[7]["weight/magma"] == 0.0
    assert "reg/magma" in records(run_b)[8] and "reg/magma" not in records(run_b)[7]


def test_halted_run_writes_a_checkpoint_and_its_summary(tmp_path, tiny_config):
    result = pretrain(tiny_config("mae", "data.subset=128", "train.halt_after_steps=2"), tmp_path / "run")
    assert result.halted and result.steps == 2 and result.checkpoint.name == "ckpt_00000002.pt"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["halted"] is True and summary["steps"] == 2
    assert summary["checkpoint"] == str(result.checkpoint) and summary["stopped_by"] is None
    assert load_checkpoint(result.checkpoint)["step"] == 2


def test_restart_before_the_first_checkpoint_starts_a_clean_metrics_file(tmp_path, tiny_config):
    run = tmp_path / "run"
    halted = pretrain(tiny_config("mae", "data.subset=128", "train.halt_after_steps=2"), run)
    halted.checkpoint.unlink()  # as if killed before any checkpoint was written
    pretrain(tiny_config("mae", "data.subset=128"), run, resume=True)
    assert len(records(run, "start")) == 1
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]


def test_resume_of_a_finished_run_trains_no_more(tiny_run, tiny_config):
    before = (tiny_run / "metrics.jsonl").read_text()
    ckpts = [(p.name, p.stat().st_mtime_ns) for p in list_checkpoints(tiny_run / "checkpoints")]
    cfg = load_config(tiny_run / "config.yaml")
    result = pretrain(cfg, tiny_run, resume=True)
    assert result.steps == 24 and not result.halted
    assert result.checkpoint == tiny_run / "checkpoints" / "ckpt_00000024.pt"
    assert (tiny_run / "metrics.jsonl").read_text() == before
    assert [(p.name, p.stat().st_mtime_ns) for p in list_checkpoints(tiny_run / "checkpoints")] == ckpts


def test_resume_of_a_finished_run_keeps_its_summary(tiny_run):
    before = json.loads((tiny_run / "summary.json").read_text())
    assert before["last_metrics"]
    result = pretrain(load_config(tiny_run / "config.yaml"), tiny_run, resume=True)
    after = json.loads((tiny_run / "summary.json").read_text())
    assert after["last_metrics"] == before["last_metrics"] and after["steps"] == before["steps"]
    assert after["checkpoint"] == str(tiny_run / "checkpoints" / "ckpt_00000024.pt")  # where the run is now
    assert result.last_metrics == before["last_metrics"]


# ---------------------------------------------------------------- run folder guards
def test_existing_checkpoints_without_resume_are_refused(tiny_run):
    files = {p: p.read_bytes() for p in sorted(tiny_run.rglob("*")) if p.is_file()}
    cfg = load_config(tiny_run / "config.yaml")
    with pytest.raises(MimregError, match="already holds checkpoints.*--resume") as info:
        pretrain(cfg, tiny_run)
    assert str(tiny_run) in str(info.value)
    assert {p: p.read_bytes() for p in sorted(tiny_run.rglob("*")) if p.is_file()} == files


def test_resume_with_a_changed_config_names_the_key(tiny_run):
    config_text = (tiny_run / "config.yaml").read_text()
    cfg = load_config(tiny_run / "config.yaml", ["optim.lr=0.002", "regularizers.uniformity.weight=0.1"])
    with pytest.raises(ConfigError, match=r"differ from the run's own in \['regularizers\.0\.weight'\]") as info:
        pretrain(cfg, tiny_run, resume=True)
    assert "train.epochs" not in str(info.value).split(";")[0]  # optim.lr may change on purpose: not refused
    assert (tiny_run / "config.yaml").read_text() == config_text
    assert latest_checkpoint(tiny_run / "checkpoints").name == "ckpt_00000024.pt"


def test_resume_into_an_empty_folder_starts_fresh(tmp_path, tiny_config):
    result = pretrain(tiny_config("mae", "data.subset=64"), tmp_path / "new", resume=True)
    assert result.steps == 2 and result.checkpoint.name == "ckpt_00000002.pt"


# ---------------------------------------------------------------- non-finite losses
@pytest.mark.parametrize("term", ["reg/uniformity", "rec"])
def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, tiny_config, monkeypatch, term):
    calls = {"n": 0}
    nan_from = 6  # 4 steps per epoch: the checkpoint of step 4 is written, step index 6 blows up

    def poisoned(original):
        def wrapper(*args, **kwargs):
            value = original(*args, **kwargs)
            calls["n"] += 1
            return value * float("nan") if calls["n"] > nan_from else value
        return wrapper

    if term == "rec":
        original = MAE.forward

        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] > nan_from:
                out.losses["rec"] = out.losses["rec"] * float("nan")
            return out
        monkeypatch.setattr(MAE, "forward", forward)
    else:
        monkeypatch.setattr(Uniformity, "loss", poisoned(Uniformity.loss))
    run = tmp_path / "run"
    cfg = tiny_config("u-mae", "data.subset=128", "train.epochs=3", "monitor=[]")
    with pytest.raises(NonFiniteLossError) as info:
        pretrain(cfg, run)
    message = str(info.value)
    assert "step 6" in message and repr(term) in message, message
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt_00000004.pt"]
    assert load_checkpoint(run)["step"] == 4
    assert max(r["step"] for r in records(run)) == 6  # nothing logged for the failed step

    # the run continues from the good checkpoint once the problem is gone
    monkeypatch.undo()
    result = pretrain(cfg, run, resume=True)
    assert result.steps == 12 and not result.halted
    assert all(r["loss"] == r["loss"] for r in records(run))


# ---------------------------------------------------------------- regularizer windows and monitors
def test_monitors_and_regularizer_window(tmp_path, tiny_config):
    cfg = tiny_config("m-mae", "regularizers.magma.start_epoch=1", "data.subset=128", "train.epochs=2",
                      "train.monitor_every=2")
    assert [m.name for m in cfg.monitor] == ["uniformity"]
    pretrain(cfg, tmp_path / "run")
    rows = {r["step"]: r for r in records(tmp_path / "run")}
    assert sorted(rows) == list(range(1, 9))
    for step, row in rows.items():
        epoch = (step - 1) // 4
        monitored = (step - 1) % 2 == 0  # monitor_every=2 counts optimizer steps from 0
        assert row["epoch"] == epoch
        assert row["weight/magma"] == (1.0 if epoch == 1 else 0.0)
        assert ("monitor/uniformity" in row) == monitored, row
        # outside its window magma is evaluated without gradient on monitor steps only
        assert ("monitor/magma" in row) == (monitored and epoch == 0), row
        assert ("reg/magma" in row) == (epoch == 1), row
        expected = row["rec"] + (row["reg/magma"] if epoch == 1 else 0.0)
        assert row["loss"] == pytest.approx(expected, rel=1e-5)
        for key in ("monitor/uniformity", "monitor/magma", "reg/magma"):
            if key in row:
                assert row[key] == row[key] and row[key] >= 0
    assert 0 < rows[1]["monitor/uniformity"] <= 1.0  # mean of squared cosines


# ---------------------------------------------------------------- gradient accumulation
@pytest.fixture
def image_dependent_masks(monkeypatch):
    """Masks that depend only on the image, so that one batch of 32 and two micro-batches of 16
    mask the same patches of the same images."""
    projection = torch.randn(4 * 4 * 3, generator=torch.Generator().manual_seed(0))
    original = MAE.forward

    def forward(self, images, *, needs=frozenset(), generator=None, noise=None):
        noise = patchify(images, self.encoder.patch_size).float() @ projection
        return original(self, images, needs=needs, generator=generator, noise=noise)

    monkeypatch.setattr(MAE, "forward", forward)


def test_accumulation_matches_the_full_batch(tmp_path, tiny_config, image_dependent_masks):
    common = ("data.subset=128", "optim.warmup_epochs=0.5", "monitor=[]")
    full = pretrain(tiny_config("mae", *common), tmp_path / "full")
    accum = pretrain(tiny_config("mae", *common, "optim.batch_size=16", "optim.accum_steps=2"), tmp_path / "accum")
    assert full.steps == accum.steps == 4
    a, b = records(tmp_path / "full"), records(tmp_path / "accum")
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert a[-1]["lr"] > 0
    # the online probe's BatchNorm normalises each micro-batch by its own statistics, as any
    # BatchNorm under accumulation: the encoder's objective and weights are what must match
    for ra, rb in zip(a, b):
        for key in ("loss", "rec"):
            assert rb[key] == pytest.approx(ra[key], rel=2e-4), (ra["step"], key)
    wa = load_checkpoint(tmp_path / "full")["model"]
    wb = load_checkpoint(tmp_path / "accum")["model"]
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa if not k.startswith("probe"))
    print("max weight difference", diff)
    assert diff < 1e-3


def test_accumulation_halves_the_optimizer_steps(tmp_path, tiny_config):
    cfg = tiny_config("mae", "data.subset=128", "optim.accum_steps=2", "optim.lr=null", "optim.blr=1e-3",
                      "monitor=[]")
    result = pretrain(cfg, tmp_path / "run")
    start = records(tmp_path / "run", "start")[0]
    assert start["steps_per_epoch"] == 2 and result.steps == 2  # 4 batches of 32, 2 per optimizer step
    assert start["lr"] == pytest.approx(1e-3 * 32 * 2 / 256)
    assert [r["step"] for r in records(tmp_path / "run")] == [1, 2]


def test_an_epoch_is_a_whole_number_of_accumulation_cycles(tmp_path, tiny_config, monkeypatch):
    """14 micro-batches of 10 with accum 3: 4 optimizer steps of 3 micro-batches each, the last 2 of
    the epoch never run (before: they ran after the epoch's checkpoint and their gradients went into
    the next epoch's first step). The lr is set once per optimizer step."""
    from mimreg.engine.data import EpochBatches

    batches = EpochBatches(140, 10, 1, 0, seed=0, accum=3)
    assert batches.steps == 12 and len(batches.for_epoch(0)) == 12
    assert EpochBatches(140, 10, 1, 0, seed=0).steps == 14
    calls = {"forward": [], "lr": 0}
    forward_backward, set_schedule = Trainer.forward_backward, Trainer.set_schedule

    def counted_forward(self, batch, epoch, micro, writer):
        calls["forward"].append((self.step, micro))
        return forward_backward(self, batch, epoch, micro, writer)

    def counted_schedule(self):
        calls["lr"] += 1
        return set_schedule(self)

    monkeypatch.setattr(Trainer, "forward_backward", counted_forward)
    monkeypatch.setattr(Trainer, "set_schedule", counted_schedule)
    result = pretrain(tiny_config("mae", "data.subset=140", "optim.batch_size=10", "optim.accum_steps=3",
                                  "train.epochs=2", "monitor=[]"), tmp_path / "run")
    assert result.steps == 8
    assert calls["forward"] == [(step, micro) for step in range(8) for micro in range(3)]
    assert calls["lr"] == 8


def test_too_few_images_for_one_step(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="no optimizer step"):
        pretrain(tiny_config("mae", "data.subset=64", "optim.accum_steps=4"), tmp_path / "a")
    with pytest.raises(DataError, match="fewer than one global batch"):
        pretrain(tiny_config("mae", "data.subset=16"), tmp_path / "b")


# ---------------------------------------------------------------- precision, probe, device
def test_bf16_on_cpu_logs_finite_losses(tmp_path, tiny_config, monkeypatch):
    qkv_dtypes = []  # what the encoder's first attention projection computed in, in each training forward
    build = pretrain_task.build_trainee

    def build_with_a_probe(cfg, num_classes, **options):
        trainee = build(cfg, num_classes, **options)
        qkv = trainee.method.encoder.vit.blocks[0].attn.qkv
        # (the k-NN monitor embeds in eval mode, outside the step: not the step's precision)
        qkv.register_forward_hook(lambda module, args, out: qkv_dtypes.append(out.dtype) if module.training else None)
        return trainee

    attention_kernels = []  # the autograd node each training attention call left: which kernel ran
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        out = sdpa(*args, **kwargs)
        if out.grad_fn is not None:
            attention_kernels.append(type(out.grad_fn).__name__)
        return out

    monkeypatch.setattr(pretrain_task, "build_trainee", build_with_a_probe)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    pretrain(tiny_config("u-mae", "data.subset=64", "train.precision=bf16"), tmp_path / "run")
    assert qkv_dtypes == [torch.bfloat16] * 2  # autocast was in force in both steps
    # not torch's fused CPU kernel, whose bf16 backward is slower than fp32 (benchmarks/results/bf16_cpu.txt):
    # the math path, computed in fp32 and cast back to bf16
    assert attention_kernels and set(attention_kernels) == {"ToCopyBackward0"}, set(attention_kernels)
    rows = records(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("loss", "rec", "reg/uniformity", "monitor/magma", "probe/ce"):
            assert torch.isfinite(torch.tensor(row[key])), (key, row)
    weights = load_checkpoint(tmp_path / "run")["model"]
    assert weights["method.encoder.vit.blocks.0.attn.qkv.weight"].dtype == torch.float32


def test_fp16_on_cpu_is_refused(tmp_path, tiny_config):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on CUDA")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        pretrain(tiny_config("mae", "data.subset=64", "train.precision=fp16"), tmp_path / "run")


def test_online_probe_is_logged_with_labels_and_can_be_switched_off(tmp_path, tiny_config, tiny_run_dir):
    accs = [r["probe/acc"] for r in records(tiny_run_dir)]
    assert all(0 <= a <= 100 for a in accs)
    # ten balanced, learnable classes: the probe on detached cls features beats chance by the end
    assert sum(accs[-3:]) / 3 > 20.0
    pretrain(tiny_config("mae", "data.subset=64", "train.online_probe=false"), tmp_path / "run")
    for row in records(tmp_path / "run"):
        assert not any(k.startswith("probe/") for k in row)
    assert not any(k.startswith("probe.") for k in load_checkpoint(tmp_path / "run")["model"])


def test_missing_cuda_device_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ConfigError, match="no CUDA device"):
        loop.resolve_device("cuda", key="train.device")
    assert loop.resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="--device: unknown device 'tpu'"):
        loop.resolve_device("tpu")


def test_step_seed_depends_on_every_part():
    seeds = {loop.step_seed(s, r, t, m) for s in (0, 1) for r in (0, 1) for t in (0, 1) for m in (0, 1)}
    assert len(seeds) == 16
    # the same in every process and every release (a resumed run draws its masks again from it): pinned
    assert (loop.step_seed(0, 0, 5, 1), loop.step_seed(1, 1, 0, 0)) == (1982051579, 1189033389)


# ---------------------------------------------------------------- console output
class FakeTerminal:
    """A stderr that says it is a terminal, so the loop shows its progress bar."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return True


def test_each_epoch_leaves_one_line_under_the_progress_bar(tmp_path, tiny_config, capsys, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    pretrain(tiny_config("u-mae", "data.subset=64", "train.epochs=2", "train.progress=true", "train.log_every=5"),
             tmp_path / "run")
    out = capsys.readouterr().out.splitlines()
    epochs = [line for line in out if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2 step 2", "epoch 2/2 step 4"]
    # the objective first, the online probe apart
    assert epochs[0].split(": ", 1)[1].startswith("loss ") and "| probe/acc" in epochs[0]
    assert "epoch 1/2" in terminal.text and "loss=" in terminal.text  # the bar, with the loss shown every step
