"""Products of 0/1 spikes in fp32: table lookups (``kernels/cpu/lut.py``) and listed nonzeros (``sparse.cpp``)
against the dense products, in one run, at several firing rates.

For each shape and density, the forward plus the weight gradient (the input gradient is the same dense product on
every path and is not timed):
- dense: ``x @ W^T`` and ``g^T x`` (the BLAS), or oneDNN's convolution forward and weight gradient;
- listed: the pass that lists the nonzeros, the sparse forward and the sparse weight gradient;
- lookups: the pass that packs the 4-bit codes, the lookup forward and the lookup weight gradient;
- split (Linear layers, where ``kernels/cpu/split.py`` runs: AMX tiles): the pass that packs the input as bf16, the
  forward as one bf16 GEMM on the weight's three bf16 pieces, the gradient's split and its three GEMMs.

Shapes at batch 32, T=4 on CIFAR: SDT 2-512's q/k/v and MLP inputs (8192 tokens, 512 -> 512 and 512 -> 2048), its
stem's 3x3 convolutions (256 -> 512 at 16x16, 512 -> 512 at 8x8), Spikformer 4-384's MLP (384 -> 1536) and stem
(192 -> 384 at 16x16). Prints medians in ms and the speed-ups over dense. ``reuse_memory`` is applied, as in
``spikeformer train``.

    python benchmarks/bench_lut.py
    python benchmarks/bench_lut.py --densities 0.05 0.12 0.27 --reps 5
    python benchmarks/bench_lut.py --counts

``--counts``: spike counts (0/1 spikes at 12 % plus 5 % more ones: values 0-2, as in Spikformer's residual stream)
through one Linear layer's forward and backward (both gradients), the split products (``split.split_linear``)
against the lookups with their listed rest (``lut.lut_linear``), alternating, at 512 to 8192 rows, 384 -> 384 and
384 -> 1536 (where ``split.available()``, else nothing to compare).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_sparse import _median_ms  # noqa: E402  (benchmarks/ is the script's folder)
from spikeformer.engine.runtime import reuse_freed_memory  # noqa: E402
from spikeformer.kernels.cpu import build, lut, sparse, split, weights  # noqa: E402

LINEAR = [("Spikformer q/k/v 384->384", 8192, 384, 384), ("SDT q/k/v 512->512", 8192, 512, 512), ("SDT MLP 512->2048", 8192, 512, 2048),
          ("Spikformer MLP 384->1536", 8192, 384, 1536)]
CONV = [("SDT stem 256->512 16x16", 128, 256, 16, 512), ("SDT rpe 512->512 8x8", 128, 512, 8, 512),
        ("Spikformer stem 192->384 16x16", 128, 192, 16, 384)]


def linear(R: int, K: int, N: int, density: float, reps: int) -> tuple[float, float, float, float]:
    g0 = torch.Generator().manual_seed(0)
    x = (torch.rand(R, K, generator=g0) < density).float()
    w = torch.randn(N, K, generator=g0) * 0.05
    g = torch.randn(R, N, generator=g0)
    lib, ptr, th = build.library(), build.ptr, build.threads()
    dense = _median_ms(lambda: (x.mm(w.t()), g.t().mm(x)), reps)
    wt = w.t().contiguous()
    wtiles = weights.make(w, torch.float32, "linear_tiles")
    out = torch.empty(R, N)
    gw = torch.empty(N, K)

    def listed():
        rows = sparse.sparse_rows(x, 1.0)
        p = [ptr(t) for t in rows]
        lib.sf_sparse_linear(R, N, *p, ptr(wt), None, ptr(out), 0, th)
        lib.sf_sparse_linear_wgrad(R, K, N, *p, ptr(g), 0, ptr(gw), th)

    def lookups():
        codes, codes_t = lut.pack(x)
        lut._products(R, K, codes, wtiles, None, out)
        lut._wgrad(R, K, codes_t, g)

    def split_pair():
        xs = split.pack(x)[0]
        split.products(xs, split.pieces(w), None)
        split.weight_grad(g, xs)

    splits = _median_ms(split_pair, reps) if split.available() else float("nan")
    return dense, _median_ms(listed, reps), _median_ms(lookups, reps), splits


def conv(M: int, C: int, HW: int, Cout: int, density: float, reps: int) -> tuple[float, float, float]:
    g0 = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = (torch.rand(M, C, HW, HW, generator=g0) < density).float().contiguous(memory_format=cl)
    w = (torch.randn(Cout, C, 3, 3, generator=g0) * 0.05).contiguous(memory_format=cl)
    g = torch.randn(M, Cout, HW, HW, generator=g0).contiguous(memory_format=cl)
    lib, ptr, th = build.library(), build.ptr, build.threads()

    def dense_pair():
        torch.nn.functional.conv2d(x, w, padding=1)
        torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                            [False, True, False])

    wt9 = w.permute(2, 3, 1, 0).contiguous()
    out = torch.empty(M, Cout, HW, HW, memory_format=cl)
    gw = torch.empty(Cout, C, 3, 3)

    def listed():
        rows = sparse.sparse_rows(x.permute(0, 2, 3, 1).reshape(-1, C), 1.0)
        p = [ptr(t) for t in rows]
        lib.sf_sparse_conv3x3(M, HW, HW, C, Cout, *p, ptr(wt9), None, ptr(out), 0, th)
        lib.sf_sparse_conv3x3_wgrad(M, HW, HW, C, Cout, *p, ptr(g), 0, ptr(gw), th)

    wt = weights.make(w, torch.float32, "conv3x3_tiles")

    def lookups():
        codes, codes_t = lut.pack_conv3x3(x)
        lut._products(M * HW * HW, 9 * C, codes, wt, None, out)
        lut._wgrad(M * HW * HW, 9 * C, codes_t, g.permute(0, 2, 3, 1))

    return _median_ms(dense_pair, reps), _median_ms(listed, reps), _median_ms(lookups, reps), float("nan")


def counts(reps: int) -> None:
    """The ``--counts`` table (see the module's docstring)."""
    print("| rows | in -> out | split ms | lookups ms | lookups / split |")
    print("|---|---|---|---|---|")
    for R in (512, 1024, 2048, 4096, 8192):
        for K, N in ((384, 384), (384, 1536)):
            g0 = torch.Generator().manual_seed(R + N)
            x = (torch.rand(R, K, generator=g0) < 0.12).float() + (torch.rand(R, K, generator=g0) < 0.05).float()
            w = (torch.randn(N, K, generator=g0) * 0.05).requires_grad_()
            xr = x.clone().requires_grad_()
            g = torch.randn(R, N, generator=g0)

            def by_split():
                split.forget()
                split.split_linear(xr, w, None).backward(g)

            def by_lookups():
                lut._last.clear()
                lut.lut_linear(xr, w, None, torch.float32).backward(g)

            times = {by_split: [], by_lookups: []}
            for f in times:
                f()
            for _ in range(reps):
                for f in times:
                    t0 = time.perf_counter()
                    f()
                    times[f].append(time.perf_counter() - t0)
            a, b = (statistics.median(times[f]) * 1e3 for f in (by_split, by_lookups))
            print(f"| {R} | {K} -> {N} | {a:.2f} | {b:.2f} | {b / a:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.12, 0.2, 0.27])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-conv", action="store_true", help="Linear layers only")
    ap.add_argument("--counts", action="store_true", help="spike counts: the split products against the lookups")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    reuse_freed_memory()
    if not build.available():
        raise SystemExit(f"the compiled kernels are unavailable: {build.build_error()}")
    if a.counts:
        if not split.available():
            raise SystemExit("the split products do not run on this CPU (no AMX tiles, or no MKL bf16 GEMM)")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32; one Linear's forward and "
              f"backward, median of {a.reps}, alternating")
        counts(a.reps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32; forward + weight gradient, "
          f"median of {a.reps}")
    print("| product | density | dense ms | listed ms | lookups ms | split ms | listed vs dense | lookups vs dense | "
          "split vs dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = [(name, linear, shape) for name, *shape in LINEAR]
    if not a.no_conv:
        cases += [(name, conv, shape) for name, *shape in CONV]
    for name, fn, shape in cases:
        for d in a.densities:
            dense, listed, lookups, splits = fn(*shape, d, a.reps)
            sp = "-" if splits != splits else f"{splits:.1f}"
            spx = "-" if splits != splits else f"{dense / splits:.2f}x"
            print(f"| {name} | {d:.2f} | {dense:.1f} | {listed:.1f} | {lookups:.1f} | {sp} | {dense / listed:.2f}x | "
                  f"{dense / lookups:.2f}x | {spx} |", flush=True)


if __name__ == "__main__":
    main()
