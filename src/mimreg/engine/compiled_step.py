"""`train.compile`: the training step's forward, and with it its backward, compiled as whole graphs.

torch.compile traces the call of the trainee (or of its DDP wrapper): encoder, masking, decoder,
losses, regularizers and online probe in one graph wherever Python allows (the probe's handling of
unlabelled images, a data-dependent shape, runs between graphs). AOTAutograd compiles the backward of
each graph with it, so GELU, LayerNorm, residual adds and the masking's gathers are fused with their
neighbours forward and backward. Shapes are static: the batch is fixed (a step's images are whole
batches) and MAE's visible count is fixed, so one graph serves the whole run, and
`reduce-overhead` replays it as CUDA graphs. Python numbers are traced as constants until they
change: the epoch then becomes a symbol (one recompilation), and a regularizer switching on or off
costs one more each (torch.compile's automatic dynamic; with `dynamic=False` every epoch would
recompile until torch's recompilation limit sent the step back to eager).

The optimizer stays torch's fused AdamW, one kernel over all parameters already: compiling it would
add nothing but a recompilation at every change of the learning rate.
"""

from __future__ import annotations

import torch
from torch import nn

from mimreg.config import TrainConfig
from mimreg.errors import ConfigError

# torch.compile's backend; the tests trace with "aot_eager" (the same graphs and autograd split,
# without inductor's code generation, which takes minutes on a small CPU)
BACKEND = "inductor"
CUDA_GRAPH_MODES = ("reduce-overhead",)


class CompiledStep:
    """Calls `model` through torch.compile; the model itself (its state dict, DDP's no_sync) is unchanged."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device):
        mode = cfg.compile_mode
        if mode in CUDA_GRAPH_MODES and device.type != "cuda":
            raise ConfigError(f"train.compile_mode={mode} replays CUDA graphs, which need a CUDA device (this run "
                              f"is on {device.type}); use train.compile_mode default or max-autotune")
        self.model = model
        self.cuda_graphs = mode in CUDA_GRAPH_MODES
        options = {"mode": mode} if mode != "default" and BACKEND == "inductor" else {}
        self.compiled = torch.compile(model, backend=BACKEND, dynamic=None, **options)

    def __call__(self, *args, **kwargs):
        if self.cuda_graphs:
            # the previous step's outputs may be overwritten from here on (they were read already)
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args, **kwargs)


def step_model(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """What the Trainer calls for a forward: `model` itself, or it compiled with `train.compile`."""
    return CompiledStep(model, cfg, device) if cfg.compile else model
