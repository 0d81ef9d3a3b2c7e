"""The Linear over nonzero spikes (``spikeformer.layers.sparse.spike_linear``) against the dense GEMM, in one run.

For each shape and density: the dense bf16 GEMMs of a Linear's forward (``x @ W^T``) and weight gradient
(``g^T x``), against the sparse path's pass over the input that lists the nonzeros, its forward and its weight
gradient. Prints medians in ms and the ratio dense / sparse; the input gradient ``g @ W`` is a dense GEMM on both
paths and is not timed. The shapes are Spikformer-4-384's on CIFAR at batch 32, T=4 (8192 tokens): the attention
projection (384 -> 384) and the MLP's second layer (1536 -> 384).

    python benchmarks/bench_spike_linear.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikeformer.neurons import _native


def _median_ms(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def run(R: int, K: int, N: int, density: float, reps: int) -> dict:
    g0 = torch.Generator().manual_seed(0)
    x = (torch.rand(R, K, generator=g0) < density).to(torch.bfloat16)
    w = torch.randn(N, K, generator=g0) * 0.05
    g = torch.randn(R, N, generator=g0).to(torch.bfloat16)
    wb = w.to(torch.bfloat16)
    lib = _native.library()
    dense_f = _median_ms(lambda: x.mm(wb.t()), reps)
    dense_w = _median_ms(lambda: g.t().mm(x), reps)
    rows_ms = _median_ms(lambda: _native.sparse_rows(x, 1.0), reps)
    rows = _native.sparse_rows(x, 1.0)
    wt = wb.t().contiguous()
    out = torch.empty(R, N, dtype=torch.bfloat16)
    ptrs = [_native._ptr(t) for t in rows]
    sp_f = _median_ms(lambda: lib.sf_sparse_linear(R, N, *ptrs, _native._ptr(wt), None, _native._ptr(out), 1,
                                                   _native.threads()), reps)
    gw = torch.empty(N, K)
    sp_w = _median_ms(lambda: lib.sf_sparse_linear_wgrad(R, K, N, *ptrs, _native._ptr(g), 1, _native._ptr(gw),
                                                         _native.threads()), reps)
    # the results are the dense ones up to summation order (checked here too; tests/test_spike_linear.py checks it)
    torch.testing.assert_close(out.float(), x.float() @ wb.float().t(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, g.float().t() @ x.float(), rtol=1e-4, atol=1e-4)
    return dict(dense_f=dense_f, dense_w=dense_w, rows=rows_ms, sp_f=sp_f, sp_w=sp_w)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.03, 0.05, 0.1, 0.2])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if _native.library() is None:
        raise SystemExit("the compiled kernels are unavailable: " + str(_native.build_error()))
    print(f"threads {a.threads}, bf16, medians of {a.reps} (ms); sparse forward = nonzero listing + products")
    print(f"{'shape':>22s} {'density':>7s} | {'dense fwd':>9s} {'sparse fwd':>10s} {'ratio':>5s} | "
          f"{'dense dW':>8s} {'sparse dW':>9s} {'ratio':>5s} | {'fwd+dW ratio':>12s}")
    for (R, K, N) in ((8192, 384, 384), (8192, 1536, 384)):
        for d in a.densities:
            r = run(R, K, N, d, a.reps)
            spf = r["rows"] + r["sp_f"]
            both = (r["dense_f"] + r["dense_w"]) / (spf + r["sp_w"])
            print(f"{f'[{R},{K}]x[{K},{N}]':>22s} {d:7.2f} | {r['dense_f']:9.2f} {spf:10.2f} "
                  f"{r['dense_f'] / spf:5.2f} | {r['dense_w']:8.2f} {r['sp_w']:9.2f} {r['dense_w'] / r['sp_w']:5.2f} | "
                  f"{both:12.2f}")


if __name__ == "__main__":
    main()
