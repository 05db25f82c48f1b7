"""MAE pretraining step: mimreg against lightly's MAE and a minimal models_mae-style reference, the
same model and optimizer, side by side in one run.

Every implementation trains the same ViT (timm blocks) with MAE's decoder, mask ratio 0.75 and fused
AdamW, on the same random batch. `mimreg` is the step the Trainer runs (its `forward_backward` and
`optimizer_step`: autocast, the finiteness check, the backward, the optimizer), `mimreg-compile` the
same with `train.compile` (the whole step compiled, --compile-mode). `lightly` is lightly's MAE example
(MaskedVisionTransformerTIMM + MAEDecoderTIMM, lightly 1.6; an optional dependency, skipped with a
message when it is not installed: `pip install --no-deps lightly`), `reference` the straightforward
MAE of the paper's code (argsort masking, take_along_dim unshuffle, norm-pix loss), written below.

Rounds are interleaved (the order rotates each round) so that machine noise hits every implementation
alike; the median img/s of each is reported, with its ratio to lightly and the reference. The step's
matrix-product FLOPs (counted on mimreg's step) over its time give a fraction of the GEMM peak
measured in the same run (best of n x n matmuls in the step's dtype). On CUDA the peak memory of
each step is reported too. --profile prints torch.profiler's table of mimreg's step.

    python benchmarks/vs_peers.py [--preset tiny32|base224] [--device cpu|cuda] [--precision fp32|bf16]
        [--batch N] [--arch A] [--img-size PX] [--rounds 5] [--steps 2] [--impls mimreg,mimreg-compile,lightly,reference]
        [--compile-mode default|reduce-overhead|max-autotune] [--threads N] [--profile [--profile-impl NAME]]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mimreg.config import load_config
from mimreg.models import VIT_ARCHS as ARCHS
from mimreg.models.pos_embed import sincos_2d

# name -> (arch, image size, patch, decoder dim, depth, heads, batch): the two settings
PRESETS = {
    "tiny32": ("vit_tiny", 32, 4, 192, 4, 6, 256),  # CIFAR-10 scale (U-MAE, MAGMA)
    "base224": ("vit_base", 224, 16, 512, 8, 16, 128),  # ImageNet scale (MAE's ViT-B/16 decoder)
}
MASK_RATIO = 0.75
TARGETS = {"cpu": 1.2, "cuda": 1.1}  # mimreg / lightly img/s (issue 10)


@dataclass
class Setting:
    arch: str
    img_size: int
    patch: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    batch: int
    device: str
    precision: str

    @property
    def encoder(self) -> tuple[int, int, int]:
        return ARCHS[self.arch]

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2


# ---------------------------------------------------------------- mimreg
def mimreg_step(s: Setting, compile_mode: str | None):
    """The Trainer's own step on a fixed batch: (step function, trainee)."""
    from mimreg.engine.loop import Trainer, _agree_finite_and_stop
    from mimreg.engine.pretrain_task import PretrainTask
    from mimreg.engine.stopping import GracefulStop

    sets = ["data.name=synthetic", f"data.img_size={s.img_size}", "data.pipeline=loader", f"model.arch={s.arch}",
            f"model.patch_size={s.patch}", f"method.decoder_dim={s.decoder_dim}",
            f"method.decoder_depth={s.decoder_depth}", f"method.decoder_heads={s.decoder_heads}",
            f"optim.batch_size={min(s.batch, 512)}", "monitor=[]", "train.online_probe=false", "train.knn_every=0",
            f"train.device={s.device}", f"train.precision={s.precision}", "train.monitor_every=100000",
            f"train.compile={'true' if compile_mode else 'false'}"]
    if compile_mode:
        sets.append(f"train.compile_mode={compile_mode}")
    torch.manual_seed(0)
    device = torch.device(s.device)
    trainer = Trainer(PretrainTask(load_config("cifar10/mae", sets), device), device)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1.5e-4
    images = torch.randn(s.batch, 3, s.img_size, s.img_size, device=s.device)
    batch = SimpleNamespace(images=images, labels=torch.zeros(s.batch, dtype=torch.long), bad_files=[])
    stop, writer = GracefulStop(), SimpleNamespace(write=lambda record: None)  # a step's records are dropped

    def step():
        _agree_finite_and_stop([trainer.forward_backward(batch, 0, 0, writer)], 0, stop, "")  # the step's sync
        trainer.optimizer_step()

    def loss():
        return trainer.module(images, epoch=0).total

    return step, loss


# ---------------------------------------------------------------- the straightforward reference
class ReferenceMAE(nn.Module):
    """MAE as the paper's code writes it, with timm blocks: the baseline of what a step costs."""

    def __init__(self, s: Setting):
        super().__init__()
        dim, depth, heads = s.encoder
        grid = s.img_size // s.patch
        self.patch, self.keep = s.patch, int(s.num_patches * (1 - MASK_RATIO))
        self.patch_embed = PatchEmbed(s.img_size, s.patch, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, grid).unsqueeze(0))
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(s.decoder_dim, grid).unsqueeze(0))
        self.decoder_blocks = nn.ModuleList(Block(s.decoder_dim, s.decoder_heads, 4.0, qkv_bias=True)
                                            for _ in range(s.decoder_depth))
        self.decoder_norm = nn.LayerNorm(s.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(s.decoder_dim, s.patch**2 * 3)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        batch, length, dim = x.shape
        shuffle = torch.argsort(torch.rand(batch, length, device=x.device), dim=1)
        restore = torch.argsort(shuffle, dim=1)
        x = torch.take_along_dim(x, shuffle[:, :self.keep, None], dim=1)
        mask = torch.ones(batch, length, device=x.device)
        mask[:, :self.keep] = 0
        mask = torch.take_along_dim(mask, restore, dim=1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(batch, length - self.keep, -1)], dim=1)
        tokens = torch.take_along_dim(tokens, restore[..., None], dim=1)
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        target = patchify(images, self.patch)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


# ---------------------------------------------------------------- lightly
def lightly_model(s: Setting) -> nn.Module | None:
    """lightly's MAE example at this setting; None when lightly is not installed."""
    try:
        from lightly.models import utils
        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
    except ImportError:
        return None
    dim, depth, heads = s.encoder

    class LightlyMAE(nn.Module):
        def __init__(self):
            super().__init__()
            vit = VisionTransformer(img_size=s.img_size, patch_size=s.patch, embed_dim=dim, depth=depth,
                                    num_heads=heads, qkv_bias=True, num_classes=0)
            self.backbone = MaskedVisionTransformerTIMM(vit=vit)
            self.sequence_length = self.backbone.sequence_length
            with warnings.catch_warnings():  # deprecated for 1.7, still the class of lightly 1.6's example
                warnings.simplefilter("ignore")
                self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=s.patch,
                                              embed_dim=dim, decoder_embed_dim=s.decoder_dim,
                                              decoder_depth=s.decoder_depth, decoder_num_heads=s.decoder_heads)
            self.criterion = nn.MSELoss()

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            batch = images.shape[0]
            idx_keep, idx_mask = utils.random_token_mask((batch, self.sequence_length), MASK_RATIO,
                                                         device=images.device)
            encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
            tokens = utils.repeat_token(self.decoder.mask_token, (batch, self.sequence_length))
            tokens = utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded).type_as(tokens))
            decoded = self.decoder.decode(tokens)
            pred = self.decoder.predict(utils.get_at_index(decoded, idx_mask))
            target = utils.get_at_index(utils.patchify(images, s.patch), idx_mask - 1)
            return self.criterion(pred.float(), target)

    return LightlyMAE()


def plain_step(model: nn.Module, s: Setting):
    """A peer's training step: forward under autocast, backward, fused AdamW."""
    model = model.to(s.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    images = torch.randn(s.batch, 3, s.img_size, s.img_size, device=s.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)

    def step():
        with torch.autocast(s.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = model(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, lambda: model(images)


# ---------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_peak_gflops(device: str, dtype: torch.dtype, n: int, repeats: int = 5, trials: int = 7) -> float:
    """Best of `trials` timings of n x n matmuls: the peak this machine reaches now."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def step_flops(loss_fn) -> float:
    """Matrix-product FLOPs of one forward + backward (torch's FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def peak_memory_gb(step, device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def interleaved(steps: dict, batch: int, device: str, rounds: int, per_round: int) -> dict[str, list[float]]:
    """img/s of each step function, `rounds` rounds, the order rotating each round."""
    names = list(steps)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            start = time.perf_counter()
            for _ in range(per_round):
                steps[name]()
            sync(device)
            rates[name].append(batch * per_round / (time.perf_counter() - start))
    return rates


def profile_table(step, device: str, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        step()
        step()
        sync(device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def build_steps(s: Setting, impls: list[str], compile_mode: str) -> tuple[dict, dict, list[str]]:
    steps, losses, notes = {}, {}, []
    for name in impls:
        if name == "mimreg":
            steps[name], losses[name] = mimreg_step(s, None)
        elif name == "mimreg-compile":
            steps[name], losses[name] = mimreg_step(s, compile_mode)
        elif name == "reference":
            torch.manual_seed(0)
            steps[name], losses[name] = plain_step(ReferenceMAE(s), s)
        elif name == "lightly":
            torch.manual_seed(0)
            model = lightly_model(s)
            if model is None:
                notes.append("lightly skipped: not installed (pip install --no-deps lightly; it needs only torch "
                             "and timm for its MAE modules)")
                continue
            steps[name], losses[name] = plain_step(model, s)
        else:
            raise SystemExit(f"unknown implementation {name!r}")
    return steps, losses, notes


def report(s: Setting, args, rates: dict, memory: dict, flops: float, peak: float, notes: list[str]) -> list[str]:
    med = {n: statistics.median(r) for n, r in rates.items()}
    lines = [f"device {s.device}, threads {torch.get_num_threads()}, {s.arch}/{s.patch} at {s.img_size} px, decoder "
             f"{s.decoder_dim}x{s.decoder_depth} ({s.decoder_heads} heads), batch {s.batch}, {s.precision}, "
             f"mask {MASK_RATIO}, fused AdamW; {args.rounds} interleaved rounds x {args.steps} steps"
             + (f", compile mode {args.compile_mode}" if "mimreg-compile" in rates else "")]
    lines.append(f"{'implementation':<16} {'median img/s':>12} {'min':>9} {'max':>9} {'GFLOP/s':>9} {'of peak':>8}"
                 f" {'vs lightly':>10} {'vs reference':>12} {'peak GB':>8}")
    for name, value in med.items():
        gflops = flops * value / s.batch / 1e9
        versus = [f"{value / med[other]:.3f}" if other in med else "-" for other in ("lightly", "reference")]
        mem = f"{memory[name]:.2f}" if memory.get(name) is not None else "-"
        lines.append(f"{name:<16} {value:>12.1f} {min(rates[name]):>9.1f} {max(rates[name]):>9.1f} {gflops:>9.1f} "
                     f"{gflops / peak:>8.2f} {versus[0]:>10} {versus[1]:>12} {mem:>8}")
    lines.append(f"step: {flops / 1e9:.1f} GFLOP of matrix products (fwd+bwd, counted on mimreg's step); "
                 f"{s.precision} GEMM peak {peak:.1f} GFLOP/s (best of {args.gemm_n}x{args.gemm_n} matmuls, this run)")
    target = TARGETS["cuda" if s.device.startswith("cuda") else "cpu"]
    best = max((n for n in med if n.startswith("mimreg")), key=med.get, default=None)
    if best and "lightly" in med:
        ratio = med[best] / med["lightly"]
        lines.append(f"target: {best} / lightly = {ratio:.3f} (>= {target}) {'met' if ratio >= target else 'NOT met'}")
    return lines + notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--batch", type=int, help="default: the preset's (256 at 32 px, 128 at 224 px)")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="default: the preset's")
    parser.add_argument("--img-size", type=int, help="default: the preset's (a smaller one for smoke runs)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per implementation per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--impls", default="mimreg,mimreg-compile,lightly,reference")
    parser.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune",
                                                                   "max-autotune-no-cudagraphs"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--gemm-n", type=int, help="matmul size of the peak (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of a step")
    parser.add_argument("--profile-impl", default="mimreg", help="the implementation --profile profiles")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--json", help="also write the numbers (img/s, ratios, peak memory) to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    arch, img, patch, ddim, ddepth, dheads, batch = PRESETS[args.preset]
    s = Setting(args.arch or arch, args.img_size or img, patch, ddim, ddepth, dheads, args.batch or batch, args.device, args.precision)
    args.gemm_n = args.gemm_n or (8192 if s.device.startswith("cuda") else 2048)
    steps, losses, notes = build_steps(s, args.impls.split(","), args.compile_mode)
    memory = {}
    for name, step in steps.items():  # warm-up, compilation, peak memory
        for _ in range(args.warmup):
            step()
        memory[name] = peak_memory_gb(step, s.device)
    rates = interleaved(steps, s.batch, s.device, args.rounds, args.steps)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[s.precision]
    peak = gemm_peak_gflops(s.device, dtype, args.gemm_n)
    first = next(n for n in ("mimreg", "mimreg-compile") if n in losses) if any(
        n.startswith("mimreg") for n in losses) else next(iter(losses))
    with torch.autocast(s.device.split(":")[0], dtype=dtype, enabled=s.precision != "fp32"):
        flops = step_flops(losses[first])
    lines = report(s, args, rates, memory, flops, peak, notes)
    if args.profile and args.profile_impl in steps:
        lines += ["", f"profile of {args.profile_impl}'s step (2 steps):", profile_table(steps[args.profile_impl], s.device)]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers(s, rates, memory, flops, peak, notes), indent=2) + "\n")


def numbers(s: Setting, rates: dict, memory: dict, flops: float, peak: float, notes: list[str]) -> dict:
    """The report as data: per implementation its median img/s, ratios and peak memory."""
    med = {n: statistics.median(r) for n, r in rates.items()}
    impls = {name: {"img_per_s": value, "rounds": rates[name], "peak_memory_gb": memory.get(name),
                    "fraction_of_gemm_peak": flops * value / s.batch / 1e9 / peak,
                    **{f"vs_{other}": value / med[other] for other in ("lightly", "reference") if other in med}}
             for name, value in med.items()}
    return {"setting": asdict(s), "gemm_peak_gflops": peak, "step_gflop": flops / 1e9, "implementations": impls,
            "notes": notes}


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
