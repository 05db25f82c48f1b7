"""Config -> encoder, method, regularizers, trainee: the one place that wires them together."""

from __future__ import annotations

from mimreg.config import Config, RegularizerConfig
from mimreg.errors import ConfigError
from mimreg.engine.init_weights import apply_init
from mimreg.methods import METHODS, Method
from mimreg.models import Encoder, ResNetEncoder, ViTEncoder, is_vit
from mimreg.regularizers import REGULARIZERS, Regularizer
from mimreg.engine.trainee import Trainee


def build_encoder(cfg: Config, load_init: bool = False) -> Encoder:
    """The encoder model.arch names: a ViTEncoder or a ResNetEncoder; with `load_init` (a fresh
    pretraining, never a resume or an evaluation) it starts from the weights of model.init."""
    model = cfg.model
    if is_vit(model.arch):
        encoder = ViTEncoder(model.arch, cfg.img_size, model.patch_size, model.drop_path)
    else:
        encoder = ResNetEncoder(model.arch, cfg.img_size, model.stem, model.drop_path)
    if load_init and model.init:
        apply_init(encoder, model.init, download=model.init_download)
    return encoder


def build_method(cfg: Config, encoder: Encoder | None = None, load_init: bool = False) -> Method:
    """The method around `encoder` (built from cfg when None); loaded before the method is built,
    so copies it makes (EMA targets) start from model.init too."""
    return METHODS[cfg.method.name](encoder or build_encoder(cfg, load_init), cfg.method.options)


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


def build_trainee(cfg: Config, num_classes: int = 0, load_init: bool = False) -> Trainee:
    method = build_method(cfg, load_init=load_init)
    regs = [build_regularizer(r, method) for r in cfg.regularizers]
    monitors = [build_regularizer(r, method) for r in cfg.monitor]
    return Trainee(method, regs, monitors, num_classes if cfg.train.online_probe else 0)
