"""Config -> encoder, method, regularizers, trainee: the one place that wires them together."""

from __future__ import annotations

from mimreg.config import Config, RegularizerConfig
from mimreg.errors import ConfigError
from mimreg.methods import METHODS, Method
from mimreg.models import Encoder, ResNetEncoder, ViTEncoder, is_vit
from mimreg.regularizers import REGULARIZERS, Regularizer
from mimreg.engine.trainee import Trainee


def build_encoder(cfg: Config) -> Encoder:
    """The encoder model.arch names: a ViTEncoder or a ResNetEncoder."""
    model = cfg.model
    if is_vit(model.arch):
        return ViTEncoder(model.arch, cfg.img_size, model.patch_size, model.drop_path)
    return ResNetEncoder(model.arch, cfg.img_size, model.stem, model.drop_path)


def build_method(cfg: Config, encoder: Encoder | None = None) -> Method:
    return METHODS[cfg.method.name](encoder or build_encoder(cfg), cfg.method.options)


def build_regularizer(entry: RegularizerConfig, method: Method) -> Regularizer:
    reg = REGULARIZERS[entry.name](entry.options, weight=entry.weight, start_epoch=entry.start_epoch or 0,
                                   duration=entry.duration, gather=entry.gather, depth=method.encoder.depth,
                                   gate_rec_loss=entry.gate_rec_loss,
                                   embed_dim=method.encoder.embed_dim)
    missing = [name for name in reg.reads() if name not in method.feature_names()]
    if missing:
        raise ConfigError(f"regularizer {entry.name!r} reads feature(s) {missing} that method "
                          f"{method.name!r} does not produce; it produces {sorted(method.feature_names())}")
    return reg


def build_trainee(cfg: Config, num_classes: int = 0) -> Trainee:
    method = build_method(cfg)
    regs = [build_regularizer(r, method) for r in cfg.regularizers]
    monitors = [build_regularizer(r, method) for r in cfg.monitor]
    return Trainee(method, regs, monitors, num_classes if cfg.train.online_probe else 0)
