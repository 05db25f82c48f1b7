"""mimreg: self-supervised ViT pretraining with representation regularizers.

The Python API, imported on first use (so `import mimreg` stays cheap):

    cfg = mimreg.load_config("u-mae", ["train.epochs=2"])    # a recipe, a YAML path or a mapping
    result = mimreg.pretrain(cfg, "runs/mine")                # -> RunResult(run_dir, checkpoint, ...)
    encoder, cfg, meta = mimreg.load_encoder(result.checkpoint)
    mimreg.evaluate(result.checkpoint, ["linear", "knn"])

`@mimreg.register_regularizer` / `@mimreg.register_method` add your own to the registries
(`REGULARIZERS`, `METHODS`); `bounded`/`one_of` declare the ranges of their options.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    **{name: ("mimreg.config", name) for name in (
        "Config", "load_config", "config_from_dict", "config_to_dict", "dump_config", "recipe_names", "preset_names")},
    "pretrain": ("mimreg.engine.loop", "pretrain"),
    "RunResult": ("mimreg.engine.loop", "RunResult"),
    "build_trainee": ("mimreg.engine.build", "build_trainee"),
    "build_encoder": ("mimreg.engine.build", "build_encoder"),
    "load_encoder": ("mimreg.eval.frozen", "load_encoder"),
    **{name: ("mimreg.commands", name) for name in ("evaluate", "analyze", "robustness", "export_timm")},
    **{name: ("mimreg.methods", name) for name in ("METHODS", "Method", "MethodOutput")},
    "register_method": ("mimreg.methods", "register"),
    **{name: ("mimreg.regularizers", name) for name in ("REGULARIZERS", "Regularizer")},
    "register_regularizer": ("mimreg.regularizers", "register"),
    **{name: ("mimreg.bounds", name) for name in ("bounded", "one_of", "unbounded")},
    **{name: ("mimreg.errors", name) for name in ("MimregError", "ConfigError", "DataError")},
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mimreg' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
