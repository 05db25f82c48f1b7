"""Run outputs: metrics.jsonl (every logged value), and to the other loggers of train.loggers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mimreg.distributed import all_reduce_mean
from mimreg.engine.loggers import open_loggers, scalars_of
from mimreg.errors import MimregError
from mimreg.io import disk_full_message


class RunningMeans:
    """Sums of scalar tensors kept on the device; one sync when read."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            self.counts[name] = self.counts.get(name, 0) + 1

    def state_dict(self) -> dict:
        """The sums averaged over processes (a collective: every process calls it). The main process
        alone saves them, and each process resumes from them: as reads average over processes, a
        resumed run then reads the same means as an uninterrupted one."""
        names = sorted(self.sums)
        sums = all_reduce_mean(torch.stack([self.sums[n] for n in names])).cpu() if names else []
        return {"sums": dict(zip(names, sums)), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])

    def read(self) -> dict[str, float]:
        """Means over the interval and over processes; resets the sums."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[n] / self.counts[n] for n in names])
        values = all_reduce_mean(stacked).tolist()
        self.sums, self.counts = {}, {}
        return dict(zip(names, values))


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl; only the main process writes."""

    def __init__(self, run_dir: Path, enabled: bool, loggers: list[str] = ("jsonl",), config: dict | None = None,
                 wandb_mode: str | None = None):
        """loggers: train.loggers in force; each other than jsonl gets every record with a step, and
        `config` once."""
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.start = time.time()
        self.loggers = open_loggers(loggers, run_dir, wandb_mode=wandb_mode) if enabled else []
        for logger in self.loggers:
            if config is not None:
                logger.log_config(config)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {**record, "time": round(time.time() - self.start, 3)}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            message = disk_full_message(self.path, err)
            if message is None:
                raise
            raise MimregError(message) from err
        values = scalars_of(record) if "step" in record else {}
        for logger in self.loggers if values else ():
            logger.log_scalars(record["step"], values)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file, oldest first; [] when there is none yet. A last line cut
    short by a crash in mid-write is dropped; a damaged line before it is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise MimregError(f"{path} line {number} is not a JSON record; delete that line "
                              "(or the file) and resume") from None
    return records
