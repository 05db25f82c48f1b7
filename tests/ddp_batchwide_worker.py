"""Run under torchrun by tests/test_batchwide_distributed.py. Every batch-wide loss on this
process's slice of one fixed global batch: the joint methods through DDP (gather on and off) and
the bare losses on gathered inputs. Losses and gradients are saved per rank.

Everything is float64: the question is whether 2 processes compute the same function as 1, and in
float32 the answer would be blurred by rounding that depends on the CPU's kernels and on the
summation order (a gradient that is zero in exact arithmetic is then pure noise)."""

import sys
from pathlib import Path

import torch

BATCH = 8  # global batch: 4 images per process on 2 processes
JOINT_METHODS = ("simclr", "vicreg", "barlow")


def build_joint(name: str, gather: bool):
    """A joint method on vit_micro in eval mode. Its projector's BatchNorm layers then normalise
    with running statistics (set here to random values, the same on every process) instead of the
    statistics of each process's batch, so every row is computed independently of the others and
    the only cross-row coupling left is the loss: 2 processes can then equal 1 process exactly. The
    encoder has no dropout or drop_path, so eval and train mode compute the same thing. float64."""
    from mimreg.methods import METHODS
    from mimreg.models import ViTEncoder

    method = METHODS[name]
    sizes = {"temperature": 0.3} if name == "simclr" else {}
    sizes = {"views": 2, "global_views": 2, "slices": 16} if name == "lejepa" else sizes
    torch.manual_seed(0)
    model = method(ViTEncoder("vit_micro", 32, 8),
                   method.Options(proj_hidden_dim=32, proj_output_dim=16, gather=gather, **sizes))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.uniform_(-0.5, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
    return model.double().eval()


def global_views():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 3, 32, 32, generator=g).double() for _ in range(2)]


def global_inputs(batch: int = BATCH, count: int = 3, dim: int = 6):
    """`count` float64 (batch, dim) tensors: the global batch the bare losses read."""
    g = torch.Generator().manual_seed(2)
    return [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(count)]


def bare_losses(inputs, gather):
    """Named terms of every batch-wide loss on `inputs` (tensors of one batch, dim 0 the batch).
    `gather` concatenates the global batch (identity in one process). Terms in LOCAL_TERMS average
    over the local batch; all others are losses of the global batch."""
    from mimreg.methods import barlow_loss, msn_loss, nt_xent_loss, vicreg_terms
    from mimreg.regularizers.mst import Mst, MstOptions

    z1, z2, z3 = inputs
    g1, g2 = gather(z1), gather(z2)
    prototypes = torch.randn(5, z1.shape[1], generator=torch.Generator().manual_seed(3), dtype=z1.dtype)
    mst = Mst(MstOptions(features=["emb.0", "emb.1"], edge_weight=0.2, sphere_weight=0.1), weight=1.0)
    msn = msn_loss(torch.cat([z1, z2]), z3, prototypes, anchor_temperature=0.5, sharpen=0.5, use_sinkhorn=True)
    return {"nt_xent": nt_xent_loss(g1, g2, 0.3),
            **{f"vicreg/{k}": v for k, v in vicreg_terms(z1, z2, g1, g2).items()},
            "barlow": barlow_loss(g1, g2),
            "barlow/all_reduce": barlow_loss(z1, z2, global_batch=True),
            "msn/ce": msn["msn"], "msn/memax": msn["memax"],
            **coding_rate_terms(z1, z2),
            "visreg": visreg_term(z1, z2),
            **koleo_mmcr_vcreg_terms(z1, z2, z3),
            "mst": mst({"emb.0": z1, "emb.1": z2}),  # the Regularizer gathers itself
            **sigreg_terms(z1, z2, g1, g2)}


def sigreg_terms(z1, z2, g1, g2):
    """SIGReg as the Regularizer computes it (the local ECF sums all-reduced with gradient, the
    slices of its first call drawn alike on every process) and on the gathered inputs: equal."""
    from mimreg.regularizers.sigreg import Sigreg, SigregOptions, unit_slices, sigreg_loss

    sigreg = Sigreg(SigregOptions(features=["emb.0", "emb.1"], slices=8, knots=5), weight=1.0)
    directions = unit_slices(z1.shape[1], 8, seed=0, dtype=z1.dtype)
    return {"sigreg": sigreg({"emb.0": z1, "emb.1": z2}),
            "sigreg/gathered": sigreg_loss(torch.stack([g1, g2]), directions, knots=5)}


def run_sigreg(inputs, gather):
    """SIGReg's two terms alone, each with the gradient of that term alone."""
    out = {}
    for name in ("sigreg", "sigreg/gathered"):
        z = [x.clone().requires_grad_(True) for x in inputs[:2]]
        value = sigreg_terms(*z, gather(z[0]), gather(z[1]))[name]
        value.backward()
        out[name] = {"value": value.detach(), "grads": [x.grad for x in z]}
    return out


def coding_rate_terms(z1, z2):
    """The coding-rate regularizer in each variant on two views (it gathers itself)."""
    from mimreg.regularizers.coding_rate import VARIANTS, CodingRate, CodingRateOptions

    feats = {"emb.0": z1, "emb.1": z2}
    return {f"coding_rate/{v}": CodingRate(CodingRateOptions(variant=v, features=["emb.0", "emb.1"]))(feats)
            for v in VARIANTS}


def visreg_term(z1, z2):
    """VISReg gathered (not its default): every process draws the same slices for the global batch."""
    from mimreg.regularizers.visreg import Visreg, VisregOptions

    return Visreg(VisregOptions(features=["emb.0", "emb.1"], slices=16), gather=True)({"emb.0": z1, "emb.1": z2})


def koleo_mmcr_vcreg_terms(z1, z2, z3):
    """KoLeo gathered (not its default), MMCR with its local term, VCReg: each Regularizer
    gathers itself, so the terms are losses of the global batch."""
    from mimreg.regularizers.koleo import KoLeo, KoLeoOptions
    from mimreg.regularizers.mmcr import Mmcr, MmcrOptions
    from mimreg.regularizers.vcreg import Vcreg, VcregOptions

    koleo = KoLeo(KoLeoOptions(features=["emb.0", "emb.1"]), weight=1.0, gather=True)
    mmcr = Mmcr(MmcrOptions(local_weight=0.1), weight=1.0)
    vcreg = Vcreg(VcregOptions(feature="cls", var_weight=2.0, cov_weight=1.0), weight=1.0)
    return {"koleo": koleo({"emb.0": z1, "emb.1": z2}), "mmcr": mmcr({"emb.0": z1, "emb.1": z3}),
            "vcreg": vcreg({"cls": z3})}


LOCAL_TERMS = ("vicreg/invariance", "msn/ce")


def run_bare(inputs, gather):
    """Terms and the gradient of their sum with respect to each input (zeros where none flows:
    MSN's target embeddings)."""
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    terms = bare_losses(inputs, gather)
    torch.stack(list(terms.values())).sum().backward()
    return {k: v.detach() for k, v in terms.items()}, [torch.zeros_like(x) if x.grad is None else x.grad for x in inputs]


def main(out_dir: str) -> None:
    from mimreg import distributed as dist

    dist.init_from_env("cpu")
    rank, world = dist.rank(), dist.world_size()
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    views = [v[part] for v in global_views()]
    result = {}
    for name in (*JOINT_METHODS, "lejepa"):  # LeJEPA on its 2 views, both global
        for mode in ("gather", "local"):
            model = build_joint(name, gather=mode == "gather")
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            total = sum(ddp(views).losses.values())
            total.backward()
            result[f"{name}/{mode}"] = {
                "loss": total.detach(),
                "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}
    for batch in (BATCH, 2):  # 2: one sample per process
        local = [x[rank * batch // world:(rank + 1) * batch // world] for x in global_inputs(batch)]
        terms, grads = run_bare(local, dist.gather_with_grad)
        result[f"bare{batch}"] = {"terms": terms, "grads": grads}
        result[f"sigreg{batch}"] = run_sigreg(local, dist.gather_with_grad)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
