"""train.loggers: W&B (offline) and MLflow (file store) get every logged scalar and the config, and a
halted run resumed with --resume continues the same W&B / MLflow run (its id kept in loggers.json)."""

from __future__ import annotations

import json
import time

import pytest

from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


def halted_then_resumed(tiny_config, run_dir, logger):
    """2 steps of a tiny MAE, halted after the first and resumed: the logged scalars by '<kind>/<key>'."""
    sets = dict(train__epochs=1, data__subset=64, optim__batch_size=32, train__log_every=1, train__loggers=["jsonl", logger],
                train__rep_monitor_every=0, train__knn_every=0, train__online_probe=False)
    assert pretrain(tiny_config("mae", train__halt_after_steps=1, **sets), run_dir).halted
    ids = run_dir / "loggers.json"  # W&B's and MLflow's run ids; TensorBoard has none
    first_id = json.loads(ids.read_text())[logger] if logger != "tensorboard" else None
    if logger == "wandb":  # W&B names an offline segment's folder by the second it starts: two in one second share a file
        time.sleep(1.05 - time.time() % 1)
    pretrain(tiny_config("mae", **sets), run_dir, resume=True)
    assert first_id is None or json.loads(ids.read_text()) == {logger: first_id}
    expected = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        for key, value in record.items():
            if "step" in record and isinstance(value, float) and key not in ("time",):
                expected.setdefault(f"{record['kind']}/{key}", []).append((record["step"], value))
    assert [s for s, _ in expected["train/loss"]] == [1, 2]
    return first_id, expected


def wandb_payloads(path):
    """The records of a W&B transaction log (.wandb): after a 7-byte header (':W&B', magic, version),
    32 KiB blocks of chunks (crc 4, length 2, type 1: full, first, middle, last), as leveldb's log.
    wandb >= 0.19 reads them in its Go core only, hence this reader."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, parts, out = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            break
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            out.append(parts)
    return out


def wandb_records(path):
    """(history rows, config) of an offline W&B run file."""
    from wandb.proto import wandb_internal_pb2

    rows, config = [], {}
    for data in wandb_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return rows, config


def test_wandb_offline_gets_every_scalar_and_the_config_and_resumes_the_same_run(tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_id, expected = halted_then_resumed(tiny_config, tmp_path / "run", "wandb")
    files = sorted(tmp_path.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2  # one per segment, both of the same run id
    logged = {}
    for path in files:
        rows, config = wandb_records(path)
        for row in rows:
            for key, value in row.items():
                if "/" in key:
                    logged.setdefault(key, []).append((row["_step"], value))
        assert config["method"]["name"] == "mae" and config["train"]["loggers"] == ["jsonl", "wandb"]
    assert {k: v for k, v in logged.items() if k in expected} == expected
    assert set(expected) <= set(logged)


def test_mlflow_file_store_holds_the_jsonl_values_and_resumes_the_same_run(tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    run_id, expected = halted_then_resumed(tiny_config, run_dir, "mlflow")
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == "mae"
    for key, values in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == values, key  # the same float64 numbers as metrics.jsonl
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_tensorboard_event_files_hold_the_jsonl_values_and_the_config(tiny_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    _, expected = halted_then_resumed(tiny_config, run_dir, "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()  # both segments' event files, in order
    assert set(expected) <= set(events.Tags()["scalars"])
    for key, values in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(s, pytest.approx(v, rel=1e-6, abs=1e-7)) for s, v in values], key  # float32 there
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: mae" in config and "- tensorboard" in config


def test_unknown_logger_and_a_bad_wandb_mode_are_refused_at_load():
    with pytest.raises(ConfigError, match=r"train.loggers: unknown logger 'neptune'; choose from \['jsonl'"):
        load_config("digits/mae", ["train.loggers=[jsonl, neptune]"])
    with pytest.raises(ConfigError, match="train.wandb_mode: unknown value 'cloud'"):
        load_config("digits/mae", ["train.wandb_mode=cloud"])


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.loggers lists mlflow, which is not installed: pip install 'mimreg\[mlflow\]'"):
        load_config("digits/mae", ["train.loggers=[mlflow]"])


def test_analyze_pictures_go_to_the_runs_mlflow_run(tiny_config, tmp_path, monkeypatch):
    """`mimreg analyze` hands its pictures to the loggers of the run's config, in the run it logged to."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from mimreg.analysis.analyze import log_pictures
    from mimreg.engine.loggers.mlflow_logger import MlflowLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = MlflowLogger(tmp_path).run_id  # as pretraining left it
    Image.new("RGB", (8, 8)).save(tmp_path / "pca.png")
    log_pictures(tiny_config("mae", train__loggers=["mlflow"]), tmp_path, {"pca": str(tmp_path / "pca.png")})
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    assert [a.path for a in client.list_artifacts(run_id, "analysis")] == ["analysis/pca.png"]
