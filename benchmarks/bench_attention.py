"""Spike attention of one CIFAR Spikformer block (tokens [4, 32, 64, 384], 12 heads): the compiled token-layout
kernel (``token_spike_attention``, what the fast path and autocast run) against the heads split around
``spike_attention`` (what ran before), forward and forward + backward, in one process, interleaved.

    python benchmarks/bench_attention.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from spikeformer.layers.attention import _split_heads, spike_attention, token_spike_attention


def split_heads_attention(q, k, v, heads, scale, fast=False):
    split = [_split_heads(t, heads) for t in (q, k, v)]
    return spike_attention(*split, scale).transpose(-3, -2).flatten(-2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--rates", default="0.1,0.3", help="firing rates of Q, K, V")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape, heads, scale = (4, 32, 64, 384), 12, 0.125
    print(f"tokens {list(shape)}, {heads} heads, {args.threads} threads, median of {args.reps}")
    for dtype in ("bf16", "fp32"):
        for rate in (float(r) for r in args.rates.split(",")):
            g = torch.Generator().manual_seed(0)
            qkv = [(torch.rand(shape, generator=g) < rate).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
                   .requires_grad_() for _ in range(3)]
            grad = torch.randn(shape, generator=g)

            def run(fn, backward):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    out = fn(*qkv, heads, scale, fast=True)
                if backward:
                    out.float().backward(grad)

            times = {}
            for backward in (False, True):
                for fn in (split_heads_attention, token_spike_attention):
                    run(fn, backward)  # warm-up
                ts = {split_heads_attention: [], token_spike_attention: []}
                for _ in range(args.reps):
                    for fn in ts:
                        t = time.perf_counter()
                        run(fn, backward)
                        ts[fn].append(time.perf_counter() - t)
                for fn, v in ts.items():
                    times[(fn, backward)] = sorted(v)[len(v) // 2] * 1e3
            for backward, what in ((False, "forward"), (True, "forward+backward")):
                a, b = times[(split_heads_attention, backward)], times[(token_spike_attention, backward)]
                print(f"{dtype} rate {rate:.1f} {what:17s} split heads {a:6.1f} ms   compiled {b:6.1f} ms   {a / b:.2f}x")


if __name__ == "__main__":
    main()
