"""Weights & Biases: offline unless WANDB_MODE or train.wandb_mode says otherwise (a cluster node
often has no network; `wandb sync <run>/wandb/offline-run-*` uploads later). Files under WANDB_DIR,
else the run folder; project WANDB_PROJECT, else mimreg; the run id kept in <run>/loggers.json."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mimreg.engine.loggers import read_ids, store_id


class WandbLogger:
    def __init__(self, run_dir: Path, mode: str | None = None):
        import wandb

        run_dir = Path(run_dir)
        run_id = read_ids(run_dir).get("wandb") or secrets.token_hex(4)  # W&B ids: letters and digits
        store_id(run_dir, "wandb", run_id)
        self.run = wandb.init(id=run_id, resume="allow", name=run_dir.name,
                              project=os.environ.get("WANDB_PROJECT", "mimreg"),
                              mode=mode or os.environ.get("WANDB_MODE") or "offline",
                              dir=os.environ.get("WANDB_DIR") or str(run_dir),
                              settings=wandb.Settings(silent=True, console="off"))

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)  # a resume may change what changes no number

    def log_image(self, name: str, path: Path) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()
