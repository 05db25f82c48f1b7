"""Where a run's numbers go besides metrics.jsonl (always written): TensorBoard, W&B, MLflow.

Each logger is one small module behind the `Logger` interface. W&B and MLflow keep their run id in
<run>/loggers.json, so that `--resume` and a SLURM requeue (the same folder) continue the same run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

IDS_FILE = "loggers.json"


class Logger(Protocol):
    def log_scalars(self, step: int, values: dict[str, float]) -> None: ...

    def log_config(self, config: dict) -> None: ...

    def log_image(self, name: str, path: Path) -> None: ...

    def close(self) -> None: ...


def read_ids(run_dir: Path) -> dict:
    path = Path(run_dir) / IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def store_id(run_dir: Path, name: str, run_id: str) -> None:
    """Keep a logger's run id in the run folder: a resumed or requeued run continues that run."""
    ids = read_ids(run_dir)
    if ids.get(name) != run_id:
        (Path(run_dir) / IDS_FILE).write_text(json.dumps({**ids, name: run_id}, indent=1) + "\n")


def open_loggers(names: list[str], run_dir: Path, *, wandb_mode: str | None = None) -> list[Logger]:
    """The loggers of `names` other than jsonl, writing for the run in `run_dir` (its run ids reused)."""
    out = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            from mimreg.engine.loggers.tensorboard_logger import TensorBoardLogger

            out.append(TensorBoardLogger(run_dir))
        elif name == "wandb":
            from mimreg.engine.loggers.wandb_logger import WandbLogger

            out.append(WandbLogger(run_dir, wandb_mode))
        elif name == "mlflow":
            from mimreg.engine.loggers.mlflow_logger import MlflowLogger

            out.append(MlflowLogger(run_dir))
    return out


def scalars_of(record: dict) -> dict[str, float]:
    """A metrics.jsonl record's numbers as '<kind>/<key>' (the step, epoch and clock left out)."""
    kind = record.get("kind", "train")
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch", "time")}


def flat(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as {'optim.lr': '0.001', ...}: what MLflow's params and TensorBoard's text hold."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def safe_key(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)
