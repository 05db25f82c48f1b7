"""T-REGS edge selection time: our exact MST (`mst_edges`) vs scipy's minimum_spanning_tree vs the
distance matrix itself (`torch.cdist`), measured side by side in one run.

For each batch size n and embedding dim d, the same (n, n) fp32 distance matrix goes to
  * ours:        `mst_edges` with the default backend (Prim's numpy loop on CPU; on CUDA Boruvka
                 from 64 points, Prim's torch loop below),
  * prim/torch:  `mst_edges(..., backend="torch")`, Prim's n - 1 steps as device ops,
  * boruvka:     `mst_edges(..., backend="boruvka")`, ceil(log2 n) whole-matrix rounds,
  * scipy:       `scipy.sparse.csgraph.minimum_spanning_tree` on the matrix copied to numpy
                 (copy and scipy's own conversion included, as a training step would pay them),
and `cdist` is `torch.cdist(z, z)` on the (n, d) embeddings. `T-REG` is one forward + backward of
`tregs_loss` (distances, selection, edge lengths, sphere term). Methods are timed round-robin, the
median of --repeats rounds is reported. Targets (issue): at n=1024, scipy/ours >= 5 and
ours/cdist <= 1. `prim/boruvka` > 1 where Boruvka is the faster exact MST (the CUDA default).

    python benchmarks/mst.py [--device cuda] [--threads 1] [--repeats 5] [--sizes 256,1024,4096] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.csgraph import minimum_spanning_tree

from mimreg.regularizers.mst import mst_edges, tregs_loss


def timer(device: str):
    def run(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, out
    return run


def scipy_mst(dist: torch.Tensor):
    return minimum_spanning_tree(dist.cpu().numpy())


def tree_length(dist: torch.Tensor, edges) -> float:
    i, j = edges
    return dist[i, j].double().sum().item()


def measure(n: int, d: int, args) -> dict:
    torch.manual_seed(n + d)
    z = torch.randn(n, d, device=args.device)
    dist = torch.cdist(z, z)
    zg = z.clone().requires_grad_(True)

    def treg():
        tregs_loss(zg).backward()
        zg.grad = None

    methods = {
        "cdist": lambda: torch.cdist(z, z),
        "ours": lambda: mst_edges(dist),
        "prim/torch": lambda: mst_edges(dist, backend="torch"),
        "boruvka": lambda: mst_edges(dist, backend="boruvka"),
        "scipy": lambda: scipy_mst(dist),
        "T-REG": treg,
    }
    tick = timer(args.device)
    for fn in methods.values():  # warm-up (allocator, BLAS, CUDA kernels)
        if n <= 1024 or fn is not methods["scipy"]:
            fn()
    times = {name: [] for name in methods}
    outputs = {}
    for r in range(args.repeats):
        for name, fn in methods.items():
            if name == "scipy" and r >= args.scipy_repeats:
                continue
            elapsed, outputs[name] = tick(fn)
            times[name].append(elapsed)
    result = {name: statistics.median(t) for name, t in times.items()}
    ours, ref = tree_length(dist, outputs["ours"]), float(outputs["scipy"].sum())
    result["agree"] = abs(ours - ref) <= 1e-5 * ref
    for name in ("prim/torch", "boruvka"):
        result["agree"] &= abs(tree_length(dist, outputs[name]) - ref) <= 1e-5 * ref
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scipy-repeats", type=int, default=3, help="scipy is slow at n=4096")
    parser.add_argument("--sizes", default="256,1024,4096")
    parser.add_argument("--dims", default="256,2048")
    parser.add_argument("--json", help="also write the medians (s) and ratios to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.scipy_repeats = min(args.scipy_repeats, args.repeats)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"numpy {np.__version__}; median of {args.repeats} rounds (scipy {args.scipy_repeats}), ms")
    head = (f"{'n':>5} {'d':>5} {'cdist':>8} {'ours':>8} {'prim/torch':>10} {'boruvka':>8} {'scipy':>9} "
            f"{'T-REG':>8} {'scipy/ours':>10} {'ours/cdist':>10} {'prim/boruvka':>12} {'same tree':>9}")
    print(head)
    print("-" * len(head))
    results = {}
    for n in (int(s) for s in args.sizes.split(",")):
        for d in (int(s) for s in args.dims.split(",")):
            r = results[n, d] = measure(n, d, args)
            ms = {k: 1e3 * v for k, v in r.items() if k != "agree"}
            print(f"{n:>5} {d:>5} {ms['cdist']:>8.2f} {ms['ours']:>8.2f} {ms['prim/torch']:>10.2f} "
                  f"{ms['boruvka']:>8.2f} {ms['scipy']:>9.1f} {ms['T-REG']:>8.2f} {r['scipy'] / r['ours']:>10.1f} "
                  f"{r['ours'] / r['cdist']:>10.2f} {r['prim/torch'] / r['boruvka']:>12.2f} "
                  f"{'yes' if r['agree'] else 'NO':>9}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "rows": [
            {"n": n, "d": d, **r, "scipy/ours": r["scipy"] / r["ours"], "ours/cdist": r["ours"] / r["cdist"]}
            for (n, d), r in results.items()]}, indent=2) + "\n")
    at_1024 = [r for (n, _), r in results.items() if n == 1024]
    if at_1024:
        speedup = min(r["scipy"] / r["ours"] for r in at_1024)
        vs_cdist = max(r["ours"] / r["cdist"] for r in at_1024)
        print(f"targets at n=1024: scipy/ours >= 5 -> worst {speedup:.1f} "
              f"({'met' if speedup >= 5 else 'MISSED'}); ours/cdist <= 1 -> worst {vs_cdist:.2f} "
              f"({'met' if vs_cdist <= 1 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
