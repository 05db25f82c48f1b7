"""Total coding rate (TCR) against collapse, in the three normalisations of its official codes.

R(Z) = 1/2 logdet(I + d / (n eps^2) Z^T Z) (Ma et al. 2007; MCR^2, Yu et al. 2020) on n features of
dimension d; maximising it spreads the features over many directions. The three codes differ in
the scale inside the logdet, the factor outside it, and eps (each file read for this module):
- `emp_ssl`: tsb0601/EMP-SSL `loss.py` (TotalCodingRate) with `main.py` (cal_TCR, --eps 0.2,
  --tcr 1): -1/2 logdet(I + d/(n eps) Z^T Z), eps NOT squared in the code (0.2 stands for eps^2),
  on the L2-normalised projections (`model/model.py` normalises), the mean over the views (patches).
- `m_mae`: yifanzhang-pro/M-MAE `loss_func.py` (uniformity_loss_TCR) with `engine_pretrain.py` and
  `main_pretrain.py` (--uniformity_mu 1, --lamb 1e-2 in the README): -logdet(I + mu/d Z^T Z) on the
  L2-normalised cls features of the global batch (GatherLayer): the scale is mu/d with d the FEATURE
  dimension (Z^T Z is d x d there), no 1/2 and no n.
- `simdino`: RobinWu218/SimDINO `simdino/main_dino.py` (MCRLoss.calc_expansion, --eps 0.5):
  -(d + n)/(d n) * 1/2 logdet(I + d/(n eps) Z^T Z) per view (eps not squared; the 1/2 is its
  Cholesky's sum of log diagonal), the mean over views; (d + n)/(d n) is its "balancing factor
  gamma". n is the global batch (its reduce_cov=1 form, which mimreg's gather gives). SimDINO's
  head L2-normalises its output (simdinov2 config `head_normalize: true`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimreg.bounds import bounded, one_of
from mimreg.errors import ConfigError
from mimreg.numerics import fp32_loss
from mimreg.regularizers.base import Regularizer, register, require_features

VARIANTS = ("m_mae", "emp_ssl", "simdino")
# eps of the official scripts (emp_ssl: main.py --eps 0.2; simdino: main_dino.py --eps 0.5; the
# simdinov2 config uses 0.05); m_mae has no eps, its scale is mu / d
VARIANT_EPS = {"emp_ssl": 0.2, "simdino": 0.5}
# the coefficient each paper puts on its TCR term, relative to its method's own loss: M-MAE lamb 1e-2
# (README, pretrain.sh), EMP-SSL --tcr 1 (with 200 on its invariance), SimDINO 1 on the expansion
VARIANT_WEIGHT = {"m_mae": 0.01, "emp_ssl": 1.0, "simdino": 1.0}


def _logdet_identity_plus(z: torch.Tensor, scale: float) -> torch.Tensor:
    """logdet(I_d + scale Z^T Z) for z (n, d), through the smaller of the two Gram matrices
    (det(I_d + s Z^T Z) = det(I_n + s Z Z^T)) and a Cholesky factor: the matrix is I + PSD."""
    gram = z.T @ z if z.shape[1] <= z.shape[0] else z @ z.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    factor = torch.linalg.cholesky(eye + scale * gram)
    return 2 * factor.diagonal().log().sum()


@fp32_loss
def coding_rate_loss(z: torch.Tensor, variant: str = "m_mae", eps: float | None = None, mu: float = 1.0,
                     normalize: bool = True) -> torch.Tensor:
    """Minus the total coding rate of one view (MCR^2 Eq. 2, official code forms; see the module).

    z: (n, d) features of one view, n >= 1; fp32 inside (fp64 stays fp64). Rows are L2-normalised
    first unless `normalize` is false (lightly's tcr_loss takes z as given). eps: for emp_ssl and
    simdino, as their codes use it (unsquared); None takes the variant's default. mu: m_mae only.
    Returns a scalar: emp_ssl -1/2 logdet(I + d/(n eps) Z^T Z); m_mae -logdet(I + mu/d Z^T Z);
    simdino -(d + n)/(d n) * 1/2 logdet(I + d/(n eps) Z^T Z).
    """
    if variant not in VARIANTS:
        raise ValueError(f"coding_rate_loss variant must be one of {VARIANTS}, got {variant!r}")
    if z.dim() != 2:
        raise ValueError(f"coding_rate_loss needs a (n, d) tensor, got shape {tuple(z.shape)}")
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    n, d = z.shape
    if variant == "m_mae":
        return -_logdet_identity_plus(z, mu / d)
    eps = VARIANT_EPS[variant] if eps is None else eps
    rate = 0.5 * _logdet_identity_plus(z, d / (n * eps))
    return -rate if variant == "emp_ssl" else -(d + n) / (d * n) * rate


@dataclass
class CodingRateOptions:
    variant: str = one_of("m_mae", *VARIANTS)  # whose normalisation (see the module docstring)
    features: list[str] = field(default_factory=lambda: ["cls"])  # one view each; the loss is their mean
    eps: float | None = bounded(None, gt=0)  # emp_ssl / simdino (unsquared); None: 0.2 / 0.5
    mu: float | None = bounded(None, gt=0)  # m_mae's scale mu / d; None: 1 (M-MAE's --uniformity_mu)
    normalize: bool = True  # L2-normalise each row first, as all three official codes do


@register
class CodingRate(Regularizer):
    """Minus the total coding rate of each listed feature, averaged over the features.

    The default, `m_mae` on cls with weight 0.01, is M-MAE ('Information flow in self-supervised
    learning', ICML 2024, yifanzhang-pro/M-MAE): the TCR form
    written for MAE's cls token. EMP-SSL's and SimDINO's are per-view forms of joint methods
    (features emb.0, emb.1). Without an explicit weight, the variant's paper weight is used.
    """

    name = "coding_rate"
    paper = ("TCR (MCR^2 Eq. 2): M-MAE, 'Information flow in SSL' (ICML 2024); EMP-SSL (Tong et al. 2023); "
             "SimDINO (Wu et al. 2025)")
    summary = "maximise the total coding rate (logdet) of the L2-normalised features (against collapse)"
    Options = CodingRateOptions
    default_weight = VARIANT_WEIGHT["m_mae"]

    def __init__(self, options: CodingRateOptions, *, weight: float | None = None, **kwargs):
        super().__init__(options, weight=weight, **kwargs)
        if weight is None:
            self.weight = VARIANT_WEIGHT[options.variant]

    @classmethod
    def check_options(cls, options: CodingRateOptions, key: str) -> None:
        super().check_options(options, key)
        require_features(options.features, key)
        if options.variant == "m_mae" and options.eps is not None:
            raise ConfigError(f"{key}.eps is not used by variant m_mae (its scale is mu / d): set {key}.mu, "
                              "or variant emp_ssl / simdino")
        if options.variant != "m_mae" and options.mu is not None:
            raise ConfigError(f"{key}.mu is used only by variant m_mae (its scale mu / d); {options.variant} "
                              f"scales by d / (n eps): set {key}.eps, or drop {key}.mu")

    def reads(self) -> tuple[str, ...]:
        return tuple(self.options.features)

    def loss(self, *features: torch.Tensor) -> torch.Tensor:
        o = self.options
        mu = 1.0 if o.mu is None else o.mu
        terms = [coding_rate_loss(f, o.variant, o.eps, mu, o.normalize) for f in features]
        return torch.stack(terms).mean()
