"""TensorBoard: scalars, the config as text, pictures as images, under <run>/tensorboard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml


class TensorBoardLogger:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_config(self, config: dict) -> None:
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))  # markdown code

    def log_image(self, name: str, path: Path) -> None:
        from PIL import Image

        self.writer.add_image(name, np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
