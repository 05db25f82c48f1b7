"""A representation monitor for pretraining: every `train.rep_monitor_every` steps (and after the
last), RankMe and alpha-ReQ (spectra.py) of the frozen encoder's features of a fixed held-out
batch: `rep_monitor_images` images of the test split, or, for a dataset without one, of the
pretraining pool (then also trained on), drawn by the seed and eval-transformed once."""

from __future__ import annotations

import math

import numpy as np
import torch

from mimreg.config import Config
from mimreg.data import dataset_stats, eval_crop_fraction, eval_transform, load_dataset
from mimreg.engine.knn_monitor import decode_images
from mimreg.errors import DataError
from mimreg.methods.joint import JointEmbedding
from mimreg.models import ViTEncoder
from mimreg.spectra import alpha_req, rankme

PREFIXES = ("rankme/", "alpha_req/")  # the keys of its records: rankme/cls, alpha_req/mean, ...


def last_values(records: list[dict]) -> dict[str, tuple[int, float]]:
    """key -> (step, value) of the last logged value of each of the monitor's keys in `records`
    (a run's metrics.jsonl), e.g. {"rankme/cls": (936, 41.2)}."""
    return {k: (r["step"], v) for r in records if r.get("kind") == "rep" for k, v in r.items() if k.startswith(PREFIXES)}


AUTO_EVERY = 200  # train.rep_monitor_every left unset: ~0.7% of a cifar10-cpu MAE run (benchmarks/rep_monitor_cost.py)

class RepMonitor:
    """`due(step, total_steps)` says whether to measure after that optimizer step; `measure(method)`
    returns {"rankme/<feature>": ..., "alpha_req/<feature>": ...} for the features `cls`, `mean`
    (ViT: mean of the patch tokens) and `emb` (a joint-embedding method's projector output of cls).
    An alpha-ReQ that is undefined (fewer than two non-zero eigenvalues in its ranks) is left out.
    Nothing is trained, every module's train/eval mode and every RNG are left as they were."""

    def __init__(self, images: torch.Tensor, *, every: int, split: str, device: torch.device | str = "cpu",
                 batch_size: int = 256):
        self.images, self.every, self.split = images, every, split
        self.device, self.batch_size = torch.device(device), batch_size

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | str = "cpu") -> RepMonitor | None:
        """The monitor `cfg.train` asks for; None when rep_monitor_every is 0 (unset: every
        AUTO_EVERY steps; the caller leaves it off under fsdp, where an explicit value is refused)."""
        every = AUTO_EVERY if cfg.train.rep_monitor_every is None else cfg.train.rep_monitor_every
        if every == 0:
            return None
        columns = cfg.data.hf_columns()
        try:
            dataset, split = load_dataset(cfg.data.name, "test", cfg.data.root, columns=columns), "test"
        except DataError:  # no test split: the pretraining pool
            dataset, split = load_dataset(cfg.data.name, "pretrain", cfg.data.root, columns=columns), "pretrain"
        rng = np.random.default_rng([cfg.train.seed, 0x726570])  # a fixed batch, apart from other draws
        size = min(cfg.train.rep_monitor_images, len(dataset))
        transform = eval_transform(cfg.img_size, *dataset_stats(cfg.data.name), eval_crop_fraction(cfg.data.name))
        images, _ = decode_images(dataset, np.sort(rng.choice(len(dataset), size, replace=False)), transform)
        return cls(images, every=every, split=split, device=device)

    def facts(self) -> dict:
        """What the run's `start` record says of the monitor."""
        return {"every": self.every, "images": len(self.images), "split": self.split}

    def due(self, step: int, total_steps: int) -> bool:
        return step > 0 and (step % self.every == 0 or step == total_steps)

    @torch.no_grad()
    def features(self, encoder: torch.nn.Module, projector: torch.nn.Module | None) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(self.images), self.batch_size):
            out = encoder.forward_masked(self.images[start : start + self.batch_size].to(self.device), None)
            chunk = {"cls": out.cls}
            if isinstance(encoder, ViTEncoder):
                chunk["mean"] = out.tokens.mean(dim=1)
            if projector is not None:
                chunk["emb"] = projector(out.cls)
            for name, value in chunk.items():
                parts.setdefault(name, []).append(value.float())
        # the spectra in float64 on the host: small matrices, one SVD routine whatever the device
        return {name: torch.cat(values).cpu() for name, values in parts.items()}

    def measure(self, method: torch.nn.Module) -> dict[str, float]:
        encoder = getattr(method, method.eval_encoder)
        # the projector follows the online encoder; a method evaluated on another encoder (MSN) has no pair
        projector = method.projector if isinstance(method, JointEmbedding) and method.eval_encoder == "encoder" else None
        modules = [m for m in (encoder, projector) if m is not None]
        modes = [m.training for m in modules]
        for module in modules:
            module.eval()
        try:
            features = self.features(encoder, projector)
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        values = {}
        for name, x in features.items():
            values[f"rankme/{name}"] = rankme(x)
            alpha = alpha_req(x)
            if not math.isnan(alpha):
                values[f"alpha_req/{name}"] = alpha
        return values
