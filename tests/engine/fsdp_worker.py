"""Run by tests/engine/test_fsdp.py under torchrun (2 processes, gloo): tiny pretraining runs in one
process group, each in OUT/<name>: the same run under DDP and under FSDP (with and without
activation checkpointing), an FSDP run halted mid-epoch and resumed, a DDP run resumed under FSDP,
BYOL (EMA target, BatchNorm projector) under DDP and FSDP, and DDP runs accumulating 2 and 3
micro-batches over epochs that are no whole number of cycles, halted mid-epoch and resumed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest's tiny configs

from conftest import TINY_SETS, one_thread, tiny_config  # noqa: E402

from mimreg import distributed as dist  # noqa: E402
from mimreg.config import load_config  # noqa: E402
from mimreg.engine.loop import pretrain  # noqa: E402

# mu-mae (MAE + gathered MAGMA and uniformity): 48 images / (4 per process x 2 accum x 2) = 3 steps;
# gradient clipping on, so the global gradient norm over the shards is exercised too; drop path draws
# from each process's own torch RNG, which a resume must restore per process
MU_MAE = ("data.subset=48", "optim.batch_size=4", "optim.accum_steps=2", "optim.clip_grad=0.5", "model.drop_path=0.1",
          "optim.lr=1e-3", "optim.warmup_epochs=0.5", "train.keep_last=5")
BYOL = [*(s for s in TINY_SETS if not s.startswith("method.decoder")), "data.subset=16", "optim.batch_size=4",
        "method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.pred_hidden_dim=32", "optim.lr=1e-3"]
HALT_AT = 2  # mid-epoch: resumed from the halt's own checkpoint


def main(out: Path) -> None:
    dist.init_from_env("cpu")
    runs = {"ddp": ["train.strategy=ddp"], "fsdp": ["train.strategy=fsdp", "train.grad_checkpointing=true"]}
    with one_thread():
        for name, sets in runs.items():
            pretrain(tiny_config("mu-mae", *MU_MAE, *sets), out / name)
        fsdp = (*MU_MAE, "train.strategy=fsdp")
        pretrain(tiny_config("mu-mae", *fsdp, f"train.halt_after_steps={HALT_AT}"), out / "fsdp_resumed")
        pretrain(tiny_config("mu-mae", *fsdp), out / "fsdp_resumed", resume=True)
        ddp = (*MU_MAE, "train.strategy=ddp", f"train.halt_after_steps={HALT_AT}")  # the same checkpoint format:
        pretrain(tiny_config("mu-mae", *ddp), out / "ddp_then_fsdp")  # a DDP run continues under FSDP
        pretrain(tiny_config("mu-mae", *fsdp), out / "ddp_then_fsdp", resume=True)
        for strategy in ("ddp", "fsdp"):
            pretrain(load_config("digits/byol", [*BYOL, f"train.strategy={strategy}"]), out / f"byol_{strategy}")
        for accum in (2, 3):  # epochs of 7 micro-batches: 1 left over from whole cycles of 2 or 3
            sets = (*MU_MAE, "data.subset=56", f"optim.accum_steps={accum}", "train.epochs=2")
            pretrain(tiny_config("mu-mae", *sets), out / f"accum{accum}")
            pretrain(tiny_config("mu-mae", *sets, "train.halt_after_steps=1"), out / f"accum{accum}_resumed")
            pretrain(tiny_config("mu-mae", *sets), out / f"accum{accum}_resumed", resume=True)
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
