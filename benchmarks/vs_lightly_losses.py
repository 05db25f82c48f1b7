"""Issue-17 regularizers against lightly's losses: values and input gradients on the same inputs.

What: for KoLeo, MMCR, EMP-SSL's TCR, VCReg, VISReg, SIGReg and LeJEPA's whole loss, mimreg's pure loss
(or regularizer) and lightly's module on the same float64 inputs (fixed seed, 3 shapes, 2 views; LeJEPA
2 global + 2 local): both values, |m - l| / |l|, and max |g_m - g_l| / max |g_l| of the input gradients.
Rows per pair and shape: `aligned` (what differs made equal through options, given slices, or lightly's
TCR negated) and `default` (each library's defaults; the sliced ones in fp32, where the same seed draws the
same slices in both); `diag` rows test an explanation of a remaining difference.
How: lightly is optional (skipped with a message when missing), never a dependency of mimreg:
    pip install --no-deps --target /tmp/lightly_site lightly==1.6.0
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src:/tmp/lightly_site python benchmarks/vs_lightly_losses.py
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from mimreg.epps_pulley import sigreg_loss
from mimreg.methods.lejepa import LeJEPA, LeJEPAOptions
from mimreg.regularizers import visreg as mimreg_visreg
from mimreg.regularizers.coding_rate import CodingRate, CodingRateOptions, coding_rate_loss
from mimreg.regularizers.koleo import KoLeo, KoLeoOptions, koleo_loss
from mimreg.regularizers.mmcr import Mmcr, MmcrOptions, mmcr_loss
from mimreg.regularizers.sigreg import Sigreg, SigregOptions
from mimreg.regularizers.vcreg import Vcreg, VcregOptions, vcreg_loss
from mimreg.regularizers.visreg import Visreg, VisregOptions, visreg_loss
from mimreg.slices import SliceSteps

SHAPES = ((64, 32), (256, 128), (32, 256))  # (B, D); the last has B < D (TCR's n x n Gram, rank-deficient C)
SEED = 0
F64 = torch.float64


# ---------------------------------------------------------------- inputs and the comparison
def make_views(b: int, d: int, views: int = 2, dtype=F64, seed: int = SEED) -> list[torch.Tensor]:
    """Views of one batch: a shared correlated Gaussian (std ~0.7, so VICReg's hinge is active) plus
    per-view noise, so the views are related as augmentations are."""
    g = torch.Generator().manual_seed(seed + 1000 * b + d)
    mix = torch.eye(d, dtype=F64) + 0.3 * torch.randn(d, d, generator=g, dtype=F64) / d**0.5
    base = torch.randn(b, d, generator=g, dtype=F64) @ mix
    return [(0.7 * (base + 0.5 * torch.randn(b, d, generator=g, dtype=F64))).to(dtype) for _ in range(views)]


def value_and_grad(fn, views: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    leaves = [v.detach().clone().requires_grad_() for v in views]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value.item(), torch.stack([torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads)])


def compare(pair: str, setting: str, views: list[torch.Tensor], mimreg_fn, lightly_fn) -> str:
    """One row: both values, their relative difference, the max relative gradient difference."""
    vm, gm = value_and_grad(mimreg_fn, views)
    vl, gl = value_and_grad(lightly_fn, views)
    b, d = views[0].shape
    rel = abs(vm - vl) / abs(vl)
    grad = ((gm - gl).abs().max() / gl.abs().max()).item()
    dtype = str(views[0].dtype).removeprefix("torch.")
    return f"{pair:<7} {setting:<50} {b:>3}x{d:<3} {dtype:<7} {vm:>+17.10e} {vl:>+17.10e} {rel:>9.2e} {grad:>9.2e}"


def lightly_draw(d: int, m: int, seed: int, dtype) -> torch.Tensor:
    """The unit slices lightly's SIGReg / VISReg draw first after torch.manual_seed(seed), in the input's dtype."""
    torch.manual_seed(seed)
    a = torch.randn(d, m, dtype=dtype)
    return a / a.norm(dim=0)


def seeded(module, seed: int = SEED):
    """lightly's module called right after torch.manual_seed(seed): its slices are then lightly_draw's."""
    def call(*args, **kwargs):
        torch.manual_seed(seed)
        return module(*args, **kwargs)
    return call


@contextlib.contextmanager
def swapped(owner, name: str, value):
    """Diagnostics only: replace owner.name for the block (to show what a difference comes from)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


# ---------------------------------------------------------------- the pairs
def koleo_rows(lt, b, d) -> list[str]:
    (z,) = make_views(b, d, 1)
    dup = z.clone()
    dup[1] = dup[0]  # a duplicate: the eps inside the distance keeps it finite in both
    rows = [compare("koleo", "default = aligned (eps 1e-8 both)", [z], koleo_loss, lt.KoLeoLoss())]
    rows.append(compare("koleo", "default, rows 0 and 1 duplicates", [dup], KoLeo(KoLeoOptions()).loss, lt.KoLeoLoss()))
    return rows


def mmcr_rows(lt, b, d) -> list[str]:
    views = make_views(b, d)
    light = lambda lmda: lambda a, c: lt.MMCRLoss(lmda)(a[:, None], c[:, None])  # (B, k=1, D) each
    return [
        compare("mmcr", "aligned: normalize=False, local 5e-3", views,
                lambda a, c: mmcr_loss(a, c, local_weight=5e-3, normalize=False), light(5e-3)),
        compare("mmcr", "aligned: normalize=True; lightly(F.normalize)", views,
                lambda a, c: mmcr_loss(a, c, local_weight=5e-3),
                lambda a, c: light(5e-3)(F.normalize(a, dim=1, eps=1e-12), F.normalize(c, dim=1, eps=1e-12))),
        compare("mmcr", "default: mimreg Mmcr vs MMCRLoss()", views, Mmcr(MmcrOptions()).loss, light(5e-3)),
    ]


def tcr_rows(lt, b, d) -> list[str]:
    views = make_views(b, d)
    tcr = lambda a, c: lt.EMPSSLLoss(tcr_eps=0.2, inv_coef=0.0)([a, c])
    mean_rate = lambda a, c: (coding_rate_loss(a, "emp_ssl", 0.2, normalize=False)
                              + coding_rate_loss(c, "emp_ssl", 0.2, normalize=False)) / 2
    default = CodingRate(CodingRateOptions(variant="emp_ssl", features=["emb.0", "emb.1"])).loss
    return [
        compare("tcr", "aligned: normalize=False; lightly negated", views, mean_rate, lambda a, c: -tcr(a, c)),
        compare("tcr", "default: CodingRate(emp_ssl) vs EMPSSL inv 0", views, default, tcr),
    ]


def tcr_descent(lt, steps: int = 200) -> str:
    """The sign finding in one line: plain gradient descent on each loss (L2-normalised 2 x 64 x 32
    embeddings, SGD lr 1), then the coding rate R = 1/2 logdet(I + d/(n eps) Z^T Z) measured by mimreg."""
    rates = {}
    for name in ("mimreg", "lightly"):
        z = torch.randn(2, 64, 32, dtype=F64, generator=torch.Generator().manual_seed(SEED)).requires_grad_()
        optimizer = torch.optim.SGD([z], lr=1.0)
        rate = lambda: -sum(coding_rate_loss(v.detach(), "emp_ssl") for v in z).item() / 2
        before = rate()
        for _ in range(steps):
            u = F.normalize(z, dim=-1)
            loss = (lt.EMPSSLLoss(inv_coef=0.0)(list(u)) if name == "lightly"
                    else sum(coding_rate_loss(v, "emp_ssl", normalize=False) for v in u) / 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rates[name] = f"{before:.3f} -> {rate():.3f}"
    return (f"tcr     diag: coding rate R after {steps} descent steps on each loss (2x64x32, SGD lr 1): "
            f"mimreg emp_ssl {rates['mimreg']}, lightly EMPSSLLoss(inv_coef=0) {rates['lightly']}")


def vcreg_rows(lt, b, d) -> list[str]:
    views = make_views(b, d)
    vlm = sys.modules["lightly.loss.vicreg_loss"]
    vicreg = lt.VICRegLoss(lambda_param=0.0)
    one = lambda a, c: 25 * vlm.variance_loss(a, 1e-4) + 1 * vlm.covariance_loss(a)  # view 0 only
    return [
        compare("vcreg", "aligned, one view: lightly's term functions", views, lambda a, c: vcreg_loss(a), one),
        compare("vcreg", "aligned: var_weight 12.5 per view, summed", views,
                lambda a, c: vcreg_loss(a, var_weight=12.5) + vcreg_loss(c, var_weight=12.5), vicreg),
        compare("vcreg", "default: Vcreg per view, summed, vs VICReg inv 0", views,
                lambda a, c: Vcreg(VcregOptions()).loss(a) + Vcreg(VcregOptions()).loss(c), vicreg),
    ]


def visreg_rows(lt, b, d) -> list[str]:
    views = make_views(b, d)
    slices = lightly_draw(d, 4096, SEED, F64)
    ours = lambda a, c: (visreg_loss(a, slices) + visreg_loss(c, slices)) / 2
    light = seeded(lambda a, c: lt.VISRegLoss(lambda_param=1.0)(local_proj=c[None], global_proj=a[None]))
    rows = [compare("visreg", "aligned: lambda 1, lightly's slices given", views, ours, light)]
    lightly_quantiles = lambda n, device, dtype: (
        torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, n + 1, dtype=torch.float32) / (n + 1)).to(dtype))
    with swapped(mimreg_visreg, "gaussian_quantiles", lightly_quantiles):
        rows.append(compare("visreg", "diag: aligned, mimreg given lightly's quantiles", views, ours, light))
    v32 = [v.float() for v in views]
    default = lambda a, c: Visreg(VisregOptions(features=["emb.0", "emb.1"])).loss(a, c)
    rows.append(compare("visreg", "default: Visreg vs VISRegLoss(), same seed", v32, default,
                        seeded(lambda a, c: lt.VISRegLoss()(local_proj=c[None], global_proj=a[None]))))
    reg_part = lambda a, c: sum(seeded(lt.VISRegLoss().forward_components)(local_proj=c[None], global_proj=a[None])[2:])
    rows.append(compare("visreg", "diag: default, lightly's reg part (no pred)", v32, default, reg_part))
    return rows


def recording_slices(module) -> list[torch.Tensor]:
    """The slices lightly's SIGReg `module` draws at each call, recorded (to check they are the given ones)."""
    drawn, draw = [], module._generate_unit_vectors

    def record(*args):
        drawn.append(draw(*args))
        return drawn[-1]

    module._generate_unit_vectors = record
    return drawn


def sigreg_fp64_grid(lt, knots: int = 17, t_max: float = 3.0):
    """Diagnostics only: lightly's SIGReg with its t / phi / weights buffers computed in fp64 (they are fp32)."""
    module = lt.SIGReg(knots=knots, t_max=t_max)
    t = torch.linspace(0, t_max, knots, dtype=F64)
    weights = torch.full((knots,), 2 * t_max / (knots - 1), dtype=F64)
    weights[[0, -1]] = t_max / (knots - 1)
    module.t, module.phi, module.weights = t, torch.exp(-t.square() / 2), weights * torch.exp(-t.square() / 2)
    return module


def sigreg_rows(lt, b, d) -> list[str]:
    views = make_views(b, d)
    slices = lightly_draw(d, 1024, SEED, F64)
    ours = lambda a, c: sigreg_loss(torch.stack([a, c]), slices)
    module = lt.SIGReg()
    drawn = recording_slices(module)
    rows = [compare("sigreg", "aligned: lightly's slices given", views, ours,
                    seeded(lambda a, c: module(torch.stack([a, c]))))]
    rows[-1] += f"   (lightly drew the given slices: {torch.equal(drawn[-1], slices)})"
    grid = sigreg_fp64_grid(lt)
    rows.append(compare("sigreg", "diag: aligned, lightly's grid in fp64", views, ours,
                        seeded(lambda a, c: grid(torch.stack([a, c])))))
    rows.append(compare("sigreg", "default: Sigreg vs SIGReg(), same seed", [v.float() for v in views],
                        lambda a, c: Sigreg(SigregOptions()).loss(torch.stack([a, c])),
                        seeded(lambda a, c: lt.SIGReg()(torch.stack([a, c])))))
    return rows


def sigreg_expectation(lt, b, d, draws: int = 8) -> str:
    """fp64 defaults draw different slices (mimreg fp32 seeds 0, 1, ..., lightly fp64 global RNG): the means over draws."""
    z = torch.stack(make_views(b, d))
    ours = Sigreg(SigregOptions())
    torch.manual_seed(12345)
    theirs = lt.SIGReg()
    with torch.no_grad():
        m = [ours.loss(z).item() for _ in range(draws)]
        lv = [theirs(z).item() for _ in range(draws)]
    sem = lambda x: statistics.stdev(x) / len(x) ** 0.5
    return (f"sigreg  default fp64, {draws} slice draws each: mimreg {statistics.mean(m):.6g} +- {sem(m):.2g}, "
            f"lightly {statistics.mean(lv):.6g} +- {sem(lv):.2g} (mean +- s.e.), {b}x{d}")


def lejepa_rows(lt, b, d) -> list[str]:
    z4 = make_views(b, d, 4)  # 2 global + 2 local
    light = lambda *v: lt.LeJEPALoss()(local_proj=torch.stack(v[2:]), global_proj=torch.stack(v[:2]))
    slices = lightly_draw(d, 1024, SEED, F64)
    given = SimpleNamespace(options=LeJEPAOptions(views=4, global_views=2, gather=False),
                            slice_steps=SimpleNamespace(draw=lambda *a, **k: slices))
    # LeJEPA.terms is the method's own loss on (V, B, d) embeddings; a stand-in self gives it the slices
    ours = lambda *v: sum(LeJEPA.terms(given, torch.stack(v)).values())
    rows = [compare("lejepa", "aligned: lightly's slices given", z4, ours, seeded(light))]
    own = SimpleNamespace(options=given.options, slice_steps=SliceSteps())
    default = lambda *v: sum(LeJEPA.terms(own, torch.stack(v)).values())
    rows.append(compare("lejepa", "default: terms() vs LeJEPALoss(), same seed", [v.float() for v in z4],
                        default, seeded(light)))
    return rows


# ---------------------------------------------------------------- report
NOTES = [
    "koleo:  same formula, eps and normalisation (lightly fills the diagonal with -2, mimreg with -inf: the same "
    "neighbour whenever B >= 2); differences are rounding only.",
    "mmcr:   lightly's MMCRLoss does not L2-normalise (mimreg's default does, as the official code) and its local "
    "term defaults to 5e-3 (mimreg 0, the official scripts): aligned through normalize=False / local_weight.",
    "tcr:    lightly's tcr_loss returns +1/2 logdet (the coding rate) and EMPSSLLoss adds it to the loss, so "
    "minimising EMPSSLLoss LOWERS the rate; EMP-SSL's TotalCodingRate returns -1/2 logdet, as mimreg. "
    "lightly also takes z as given (mimreg's default L2-normalises, as EMP-SSL's projector does). At B < D "
    "lightly's d x d logdet has 224 unit eigenvalues beside ~1e4 (cond 1e4), mimreg's n x n Gram cond 4: the "
    "7e-11 grad diff at 32x256 is lightly's rounding (a n x n torch.logdet agrees with mimreg to 1e-15).",
    "vcreg:  lightly's VICRegLoss halves the variance term (official VICReg: (std_a + std_b) / 2) and sums the "
    "covariance terms; mimreg's vcreg is one feature: two views need var_weight 12.5 each to equal it.",
    "visreg: terms, eps and slice count equal; lightly's Gaussian quantiles are Normal.icdf in fp32, mimreg's ndtri "
    "in fp32 (1 fp32 ulp apart, the diag row swaps them in); lightly's default total is 0.1 pred + 0.9 reg, "
    "mimreg's regularizer is reg alone (weight 9 beside the method's loss: the same 9:1).",
    "sigreg: same statistic; lightly's t / phi / weights are fp32 buffers (the diag row recomputes them in fp64); "
    "in fp32 both draw the same slices from seed 0, in fp64 lightly draws fp64 normals (other slices).",
    "lejepa: the same convex mix (lambda 0.05) of the same prediction loss and SIGReg over all 4 views.",
    "lightly 1.6.0 source, not run here (one process): #1920 fixed (SIGReg sums cos / sin with the autograd-aware "
    "torch.distributed.nn.all_reduce), #1977 fixed (BarlowTwinsLoss: dist_nn.all_reduce(c / world_size)), #2002 "
    "fixed (LeJEPALoss runs SIGReg on cat(global, local); the lejepa aligned row agrees with mimreg's all-view SIGReg).",
]


def lightly_loss_modules():
    try:
        import lightly
        import lightly.loss as lt
        from lightly.loss.lejepa_loss import SIGReg
    except ImportError as error:
        return None, f"lightly skipped: not importable ({error}); pip install --no-deps lightly (it needs only torch)"
    lt.SIGReg = SIGReg
    return (f"{lightly.__version__} (from {os.path.dirname(os.path.dirname(lightly.__file__))})", lt), ""


def main() -> None:
    found, message = lightly_loss_modules()
    if found is None:
        print(message)
        return
    version, lt = found
    torch.set_num_threads(1)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"command: OMP_NUM_THREADS={threads} python {' '.join(sys.argv)}; lightly {version}; torch {torch.__version__}")
    print(f"{'pair':<7} {'setting':<50} {'BxD':<7} {'dtype':<7} {'mimreg':>17} {'lightly':>17} {'|m-l|/|l|':>9} "
          f"{'grad diff':>9}")
    for b, d in SHAPES:
        for rows in (koleo_rows, mmcr_rows, tcr_rows, vcreg_rows, visreg_rows, sigreg_rows, lejepa_rows):
            for row in rows(lt, b, d):
                print(row, flush=True)
    print(sigreg_expectation(lt, *SHAPES[0]))
    print(tcr_descent(lt))
    print("grad diff: max |g_mimreg - g_lightly| / max |g_lightly| over the inputs (all views).")
    print("\n".join(NOTES))


if __name__ == "__main__":
    main()
