"""The regularizer interface: a pure loss on named features, plus weight, window and gathering."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mimreg.bounds import first_problem
from mimreg.distributed import gather_with_grad
from mimreg.errors import ConfigError

REGULARIZERS: dict[str, type["Regularizer"]] = {}


def register(cls: type["Regularizer"]) -> type["Regularizer"]:
    REGULARIZERS[cls.name] = cls
    return cls


def require_features(features: list[str], key: str, example: str = "[cls] or [emb.0, emb.1]") -> None:
    """Refuse an empty `features` list of the regularizer at `key` (it would read nothing)."""
    if not features:
        raise ConfigError(f"{key}.features must name at least one feature, e.g. {example}")


class Regularizer(nn.Module):
    """A loss term read from a method's named features.

    Subclasses set `name`, `paper`, `summary`, `Options` (a dataclass), `default_weight`, and
    implement `reads()` (feature names, in the order `loss` takes them) and `loss(*tensors)`.
    The weight is `weight` during epochs [start_epoch, start_epoch + duration) and 0 outside.
    With `gather`, batch-wide losses see the global batch of all processes. A regularizer with its
    own parameters can train them through `auxiliary_loss`, which the Trainee adds unweighted.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type]
    default_weight: ClassVar[float] = 1.0
    batch_wide: ClassVar[bool] = True
    default_gather: ClassVar[bool] = True  # what `gather` is when a config leaves it out: the official code's
    min_batch: ClassVar[int] = 2
    # the auxiliary loss trains from the first step, before the weight switches on (a learned
    # estimator must be fitted before the encoder is asked to minimise it)
    aux_while_off: ClassVar[bool] = False

    def __init__(self, options: Any, *, weight: float | None = None, start_epoch: int = 0,
                 duration: int | None = None, gather: bool | None = None, depth: int = 0, embed_dim: int = 0,
                 gate_rec_loss: float | None = None):
        super().__init__()
        self.check_options(options, f"regularizers.{self.name}")
        # MI-MAE's one-way switch: off until the reconstruction loss (an EMA) drops below the gate
        self.gate_rec_loss = gate_rec_loss
        self.register_buffer("gate_open", torch.tensor(gate_rec_loss is None))
        self.options = options
        self.embed_dim = embed_dim
        self.weight = self.default_weight if weight is None else float(weight)
        self.start_epoch, self.duration = start_epoch, duration
        self.gather = self.default_gather if gather is None else gather
        self.setup(depth)

    @classmethod
    def check_options(cls, options: Any, key: str) -> None:
        """Refuse options this regularizer cannot run with, as a ConfigError naming the key
        (`regularizers.mst.features`): each field out of the range `Options` declares for it, and
        (in a subclass) what involves several fields. Run at load, and when constructed directly."""
        problem = first_problem(options, key)
        if problem:
            raise ConfigError(problem)

    def setup(self, depth: int) -> None:
        """Resolve options that depend on the encoder (e.g. negative block indices; `self.embed_dim`)."""

    def reads(self) -> tuple[str, ...]:
        raise NotImplementedError

    def loss(self, *features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def auxiliary_loss(self, features: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A loss for the regularizer's own parameters, added unweighted while the weight is active
        (also before, with `aux_while_off`; never for a monitor); None for regularizers without parameters."""
        return None

    def weight_at(self, epoch: int) -> float:
        """The weight at `epoch`: inside [start_epoch, start_epoch + duration), or, for a gated
        regularizer, from the step its gate opened on (the gate replaces the window)."""
        if self.gate_rec_loss is not None:
            return self.weight if bool(self.gate_open) else 0.0
        end = float("inf") if self.duration is None else self.start_epoch + self.duration
        return self.weight if self.start_epoch <= epoch < end else 0.0

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = [features[name] for name in self.reads()]
        if self.gather and self.batch_wide:
            inputs = [gather_with_grad(x) for x in inputs]
        batch = inputs[0].shape[0]
        if self.batch_wide and batch < self.min_batch:
            raise ConfigError(
                f"regularizer {self.name!r} is batch-wide and needs at least {self.min_batch} samples, "
                f"got a batch of {batch}; raise optim.batch_size (or keep gather: true on several processes)"
            )
        return self.loss(*inputs)

    def resolve_block(self, index: int, depth: int) -> int:
        absolute = index + depth if index < 0 else index
        if not 0 <= absolute < depth:
            raise self.option_error(f"block index {index} is out of range for an encoder of {depth} blocks")
        return absolute

    def option_error(self, message: str) -> ConfigError:
        return ConfigError(f"regularizer {self.name!r}: {message}")
