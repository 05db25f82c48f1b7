"""Run by tests/engine/test_distributed.py under torchrun: one DDP step, results saved per rank.
float64 (the online probe aside: it reads its features in float32), so that 2 processes can be
compared with 1 without the rounding of one CPU's kernels in the way."""

import sys
from pathlib import Path

import torch


def build_trainee(gather: bool = True):
    from mimreg.engine.trainee import Trainee
    from mimreg.methods import MAE
    from mimreg.methods.mae import MAEOptions
    from mimreg.models import ViTEncoder
    from mimreg.regularizers.magma import Magma, MagmaOptions
    from mimreg.regularizers.uniformity import Uniformity, UniformityOptions

    torch.manual_seed(0)
    method = MAE(ViTEncoder("vit_micro", 32, 4), MAEOptions(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    regs = [Uniformity(UniformityOptions(), weight=0.5, gather=gather),
            Magma(MagmaOptions(), weight=1.0, gather=gather, depth=method.encoder.depth)]
    trainee = Trainee(method, regs, [], num_classes=10).double()
    trainee.probe.float()  # the probe (and its BatchNorm) read their detached features in float32
    trainee.probe_norm.float()
    return trainee


def global_batch(size: int = 8):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(size, 3, 32, 32, generator=g).double(), torch.randint(0, 10, (size,), generator=g),
            torch.rand(size, 64, generator=g))


def main(out_dir: str, gather: bool) -> None:
    from mimreg import distributed as dist

    dist.init_from_env("cpu")
    rank, world = dist.rank(), dist.world_size()
    trainee = build_trainee(gather)
    model = torch.nn.parallel.DistributedDataParallel(trainee)
    images, labels, noise = global_batch()
    part = slice(rank * len(images) // world, (rank + 1) * len(images) // world)
    result = model(images[part], labels[part], noise=noise[part])
    result.total.backward()
    grads = {n: p.grad.clone() for n, p in trainee.named_parameters() if p.grad is not None}
    torch.save({"total": result.total.detach(), "terms": result.terms, "grads": grads},
               Path(out_dir) / f"rank{rank}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "gather")
