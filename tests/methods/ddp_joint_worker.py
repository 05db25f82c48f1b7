"""Run by tests/methods/test_joint_distributed.py under torchrun: one DDP step of SimCLR per rank,
with gather on and off, plus the bare loss on gathered embeddings; results saved per rank."""

import sys
from pathlib import Path

import torch

BATCH = 8  # global batch: 4 images per process on 2 processes


def build_simclr(gather: bool):
    """SimCLR on vit_micro in eval mode. The projector's BatchNorm then normalises with its running
    statistics (0 and 1 at init) instead of the statistics of each process's batch, so every row
    is computed independently of the others and the only cross-row coupling left is the loss:
    2 processes can then equal 1 process exactly. (In train mode each process normalises by its
    own 4 rows; the gathered embeddings then differ from a 1-process run on 8 rows.) The encoder
    has no dropout or drop_path, so eval and train mode compute the same thing."""
    from mimreg.methods import SimCLR
    from mimreg.methods.simclr import SimCLROptions
    from mimreg.models import ViTEncoder

    torch.manual_seed(0)
    model = SimCLR(ViTEncoder("vit_micro", 32, 8),
                   SimCLROptions(temperature=0.3, proj_hidden_dim=32, proj_output_dim=16, gather=gather))
    with torch.no_grad():  # non-trivial running statistics, the same on every process
        bn = model.projector[1]
        bn.running_mean.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(7))
        bn.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(8))
    return model.eval()


def global_views():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 3, 32, 32, generator=g) for _ in range(2)]


def global_embeddings():
    g = torch.Generator().manual_seed(2)
    return torch.randn(BATCH, 6, generator=g, dtype=torch.float64), torch.randn(BATCH, 6, generator=g, dtype=torch.float64)


def main(out_dir: str) -> None:
    from mimreg import distributed as dist
    from mimreg.methods import nt_xent_loss

    dist.init_from_env("cpu")
    rank, world = dist.rank(), dist.world_size()
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    views = [v[part] for v in global_views()]
    result = {}
    for mode in ("gather", "local"):
        model = build_simclr(gather=mode == "gather")
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        out = ddp(views)
        out.losses["nt_xent"].backward()
        result[mode] = {"loss": out.losses["nt_xent"].detach(),
                        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}
    z1, z2 = (z[part].clone().requires_grad_(True) for z in global_embeddings())
    loss = nt_xent_loss(dist.gather_with_grad(z1), dist.gather_with_grad(z2), 0.3)
    loss.backward()
    result["bare"] = {"loss": loss.detach(), "z1_grad": z1.grad, "z2_grad": z2.grad}
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
