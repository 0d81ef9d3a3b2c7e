"""The compiled spike attention's products: listed (only the rows a spike operand's nonzeros pick) against dense
small GEMMs, both run through ``kernels/cpu/attention.py`` in one process, interleaved, and ``auto`` (the density
rule of ``attention.cpp``'s ``listed_max_density``). Shapes: a CIFAR Spikformer 4-384 block (64 tokens, head dim
32), QKFormer 10-384's last stage on a 32x32 input (4 tokens, head dim 64), and head dims 16 and 64 at 64 tokens;
Q, K and V fire at the given rates (about 3 % in those models at their initial weights, with BatchNorm statistics of
a batch). Prints medians in ms of forward and backward and the speed-up over dense; checks that all three give the
same bits.

    python benchmarks/bench_attention_products.py [--reps 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_sparse import _median_ms  # noqa: E402  (benchmarks/ is the script's folder)
from spikeformer.engine.runtime import reuse_freed_memory  # noqa: E402
from spikeformer.kernels.cpu import attention as A  # noqa: E402

# (name, [T, B, N, C], heads)
SHAPES = [
    ("Spikformer 4-384 block, d=32", (4, 32, 64, 384), 12),
    ("QKFormer 10-384 stage 3 at 32x32, d=64", (4, 32, 4, 384), 6),
    ("64 tokens, d=64", (4, 32, 64, 384), 6),
    ("64 tokens, d=16", (4, 32, 64, 256), 16),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rates", default="0.03,0.06,0.1,0.3", help="firing rates of Q, K, V")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    print(f"torch {torch.__version__}, {args.threads} threads; fp32; median of {args.reps}")
    print("| shape | rate | dense fwd ms | listed fwd ms | auto fwd ms | dense bwd ms | listed bwd ms | auto bwd ms "
          "| listed vs dense (fwd / bwd) | same bits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, shape, heads in SHAPES:
        for rate in (float(r) for r in args.rates.split(",")):
            g = torch.Generator().manual_seed(0)
            q, k, v = ((torch.rand(shape, generator=g) < rate).float() for _ in range(3))
            go = torch.randn(shape, generator=g)
            fwd, bwd, outs = {}, {}, {}
            for kind in ("dense", "listed", "auto"):
                outs[kind] = (A.attention_forward(q, k, v, heads, 0.125, kind),
                              *A.attention_backward(go, q, k, v, heads, 0.125, kind))
            for _ in range(args.reps):  # interleaved: one rep of each kind per round
                for kind in ("dense", "listed", "auto"):
                    fwd.setdefault(kind, []).append(
                        _median_ms(lambda: A.attention_forward(q, k, v, heads, 0.125, kind), 1))
                    bwd.setdefault(kind, []).append(
                        _median_ms(lambda: A.attention_backward(go, q, k, v, heads, 0.125, kind), 1))
            med = {kind: (sorted(fwd[kind])[args.reps // 2], sorted(bwd[kind])[args.reps // 2]) for kind in fwd}
            same = all(torch.equal(a, b) for kind in ("listed", "auto") for a, b in zip(outs[kind], outs["dense"]))
            d, li, au = med["dense"], med["listed"], med["auto"]
            print(f"| {name} | {rate:g} | {d[0]:.2f} | {li[0]:.2f} | {au[0]:.2f} | {d[1]:.2f} | {li[1]:.2f} | "
                  f"{au[1]:.2f} | {d[0] / li[0]:.2f}x / {d[1] / li[1]:.2f}x | {same} |")


if __name__ == "__main__":
    main()
