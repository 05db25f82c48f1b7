"""Run by tests/engine/test_data_pipeline.py under torchrun: each rank saves its device-pipeline
batches of two steps of epoch 1."""

import sys
from pathlib import Path

import torch


def batches(world: int, rank: int, batch_size: int) -> list[dict]:
    from mimreg.config import load_config
    from mimreg.engine.data import build_pretrain_data

    cfg = load_config("digits/msn", ["data.name=synthetic", "data.subset=128", "data.pipeline=device",
                                     "data.focal_views=2", f"optim.batch_size={batch_size}"])
    data = build_pretrain_data(cfg, world, rank)
    out = []
    for step, batch in enumerate(data.loader(1, 1, num_workers=0, pin_memory=False)):
        if step == 2:
            break
        out.append({"labels": batch.labels, "views": batch.images})
    return out


def main(out_dir: str) -> None:
    from mimreg import distributed as dist

    torch.set_num_threads(1)
    dist.init_from_env("cpu")
    rank, world = dist.rank(), dist.world_size()
    torch.save(batches(world, rank, 16), Path(out_dir) / f"rank{rank}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
