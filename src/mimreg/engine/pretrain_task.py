"""Pretraining as a task of the engine: the trainee (method + regularizers + online probe), its
batches, its optimizer groups, the online k-NN monitor after epochs and the representation monitor
(RankMe, alpha-ReQ) between steps."""

from __future__ import annotations

import torch

from mimreg import distributed as dist
from mimreg.config import Config, config_from_stored, config_to_dict
from mimreg.engine.build import build_trainee
from mimreg.engine.data import build_pretrain_data
from mimreg.engine.knn_monitor import KnnMonitor
from mimreg.engine.rep_monitor import RepMonitor
from mimreg.engine.run_info import start_facts, start_line
from mimreg.engine.schedule import param_groups
from mimreg.engine.task import seed_process


class PretrainTask:
    """A `Task` (engine/task.py) built from a pretraining config, on `device`."""

    kind = "pretrain"

    def __init__(self, cfg: Config, device: torch.device, fresh: bool = True):
        self.cfg, self.optim, self.train, self.num_workers = cfg, cfg.optim, cfg.train, cfg.data.num_workers
        seed_process(cfg.train.seed)
        self.data = build_pretrain_data(cfg, dist.world_size(), dist.rank(), device=device)
        # model.init only in a fresh run: a resumed one restores its checkpoint instead
        self.module = build_trainee(cfg, self.data.num_classes, load_init=fresh).to(device)
        self.record = config_to_dict(cfg)
        sharded = cfg.train.strategy == "fsdp" and dist.is_distributed()
        # the monitors embed on the main process alone: not possible with sharded weights
        self.knn = KnnMonitor.from_config(cfg, device) if dist.is_main_process() and not sharded else None
        self.rep = RepMonitor.from_config(cfg, device) if dist.is_main_process() and not sharded else None

    @staticmethod
    def stored_record(saved: dict) -> dict:
        """A checkpoint's config as this release writes it (defaults filled), to compare on resume."""
        return config_to_dict(config_from_stored(saved))

    def parameter_groups(self, module: torch.nn.Module) -> list[dict]:
        return param_groups(module, self.optim.weight_decay)

    def clipped_parameters(self):
        return self.module.method.clipped_parameters()

    def on_step_end(self, progress: float) -> None:
        self.module.method.on_step_end(progress)  # e.g. EMA target updates

    def step_facts(self, epoch: int) -> dict:
        return {f"weight/{r.name}": r.weight_at(epoch) for r in self.module.regularizers}

    def evaluate(self, epochs_done: int, last: bool) -> dict | None:
        if self.knn is None or not self.knn.due(epochs_done):
            return None
        method = self.module.method
        return {"kind": "knn", **self.knn.measure(getattr(method, method.eval_encoder))}

    def between_steps(self, step: int, total_steps: int) -> dict | None:
        if self.rep is None or not self.rep.due(step, total_steps):
            return None
        return {"kind": "rep", **self.rep.measure(self.module.method)}

    def start_facts(self, world: int) -> tuple[dict, str]:
        monitor = {"rep_monitor": self.rep.facts()} if self.rep is not None else {}
        return ({"config": self.cfg.recipe, **start_facts(self.cfg, world), **monitor},
                f"{self.cfg.recipe}: {self.data.num_images} images ({self.data.pipeline} pipeline); "
                f"{start_line(self.cfg, world)}")

    def config_notes(self, world: int) -> list[str]:
        return [start_line(self.cfg, world)]
