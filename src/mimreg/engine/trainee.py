"""Everything that trains, in one module: the method, its regularizers and the online probe.

One module means one DDP wrapper and one optimizer over all parameters, and the loop stays the
same for every method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimreg.distributed import all_reduce_mean
from mimreg.engine.task import StepResult
from mimreg.errors import ConfigError
from mimreg.methods import Method
from mimreg.regularizers import Regularizer


def keep_in_graph(total: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """`total` plus a zero that touches every parameter of an idle module, so DDP finds them used."""
    for p in module.parameters():
        total = total + p.sum() * 0.0
    return total


class Trainee(nn.Module):
    def __init__(self, method: Method, regularizers: list[Regularizer], monitors: list[Regularizer],
                 num_classes: int = 0, probe_feature: str = "cls"):
        super().__init__()
        self.method = method
        self.regularizers = nn.ModuleList(regularizers)
        self.monitors = nn.ModuleList(monitors)
        self.probe_feature = probe_feature
        # MAE's linear-probe head: a parameter-free BatchNorm, then the layer. A ViT's cls token after
        # its LayerNorm is mostly one vector common to all images; on raw features the online probe
        # stays near chance while a standardised probe of the same features is at ~97% (digits).
        self.probe_norm = nn.BatchNorm1d(method.encoder.embed_dim, affine=False, eps=1e-6) if num_classes > 0 else None
        self.probe = nn.Linear(method.encoder.embed_dim, num_classes) if num_classes > 0 else None
        self.register_buffer("rec_ema", torch.tensor(-1.0))  # for gated regularizers; -1: no value yet

    def needs(self, epoch: int, monitor: bool) -> frozenset[str]:
        """Features the method must return at this step."""
        # a closed gate may open during this very step, so its features are always computed
        active = [r for r in self.regularizers
                  if r.weight_at(epoch) != 0 or monitor or r.aux_while_off
                  or (r.gate_rec_loss is not None and not bool(r.gate_open))]
        if monitor:
            active += list(self.monitors)
        names = {name for reg in active for name in reg.reads()}
        if self.probe is not None:
            names.add(self.probe_feature)
        return frozenset(names)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, *, epoch: int = 0,
                monitor: bool = False, **method_kwargs) -> StepResult:
        """One objective evaluation. Inactive and monitored regularizers are computed without
        gradient only when `monitor` is set (every `train.monitor_every` steps)."""
        out = self.method(images, needs=self.needs(epoch, monitor), **method_kwargs)
        total = torch.stack([loss.float() for loss in out.losses.values()]).sum()
        objective = total.detach()
        terms = {name: loss.detach() for name, loss in out.losses.items()}
        events = []
        if self.training and any(r.gate_rec_loss is not None for r in self.regularizers):
            if "rec" not in out.losses:
                raise ConfigError(f"gate_rec_loss needs a reconstruction loss `rec`; method {self.method.name!r} "
                                  f"has {sorted(out.losses)}: remove gate_rec_loss or use mae/simmim")
            events = self.update_gates(out.losses["rec"])
        for reg in self.regularizers:
            weight = reg.weight_at(epoch)
            if weight != 0:
                value = reg(out.features)
                total = total + weight * value
                objective = objective + weight * value.detach().float()
                terms[f"reg/{reg.name}"] = value.detach()
            elif monitor:
                with torch.no_grad():
                    terms[f"monitor/{reg.name}"] = reg(out.features)
            # the regularizer's own parameters train on their loss, unweighted
            fit = weight != 0 or (reg.aux_while_off and self.training)
            aux = reg.auxiliary_loss(out.features) if fit else None
            if aux is not None:
                total = total + aux
                terms[f"aux/{reg.name}"] = aux.detach()
            elif weight == 0:
                total = keep_in_graph(total, reg)
        for reg in self.monitors:
            if monitor:
                with torch.no_grad():
                    terms[f"monitor/{reg.name}"] = reg(out.features)
            total = keep_in_graph(total, reg)
        if self.probe is not None and labels is not None:
            ce, acc = self.probe_loss(out.features[self.probe_feature], labels)
            total = total + ce
            terms["probe/ce"], terms["probe/acc"] = ce.detach(), acc
        return StepResult(total=total, objective=objective, terms=terms, events=events)

    @torch.no_grad()
    def update_gates(self, rec: torch.Tensor, decay: float = 0.98) -> list[dict]:
        """Track an EMA of the reconstruction loss (the same on every process) and open, for good,
        each gated regularizer whose threshold it falls below; returns a `gate` record for each.
        Comparing the EMA with a threshold is a host sync per step, for gated runs only."""
        value = all_reduce_mean(rec.detach().float())
        ema = value if self.rec_ema < 0 else decay * self.rec_ema + (1 - decay) * value
        self.rec_ema.copy_(ema)
        opened = []
        for reg in self.regularizers:
            if reg.gate_rec_loss is not None and not bool(reg.gate_open) and float(ema) < reg.gate_rec_loss:
                reg.gate_open.fill_(True)
                opened.append({"kind": "gate", "regularizer": reg.name, "rec_ema": float(ema),
                               "message": f"{reg.name} switched on (reconstruction EMA below its gate)"})
        return opened

    def probe_loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the online linear probe on detached, batch-normalised features; unlabelled
        (-1) ignored."""
        norm = self.probe_norm  # batch statistics in training, but a batch of 1 has none: running ones
        logits = self.probe(F.batch_norm(features.detach().to(self.probe.weight.dtype), norm.running_mean, norm.running_var,
                                         training=self.training and len(features) > 1, momentum=norm.momentum,
                                         eps=norm.eps))
        if len(logits) != len(labels):  # multi-view methods stack their views along the batch
            labels = labels.repeat(len(logits) // len(labels))
        # no data-dependent branch or shape (no host sync, one compiled graph): unknown labels weigh 0,
        # and a batch without labels gives 0 while keeping every parameter in the graph (DDP)
        known = (labels >= 0).float()
        count = known.sum().clamp(min=1)
        ce = (F.cross_entropy(logits, labels.clamp(min=0), reduction="none") * known).sum() / count
        acc = ((logits.argmax(dim=1) == labels).float() * known).sum() / count * 100
        return ce, acc.detach()
