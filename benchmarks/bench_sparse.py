"""Linear layers and 3x3 convolutions over nonzero spikes (``spikeformer.layers.sparse``) against the dense
products, in one run.

Linear, for each shape and density: the dense bf16 GEMMs of the forward (``x @ W^T``) and the weight gradient
(``g^T x``) against the sparse path's pass over the input that lists the nonzeros, its forward and its weight
gradient. Shapes of Spikformer-4-384 on CIFAR at batch 32, T=4 (8192 tokens): the attention projection
(384 -> 384) and the MLP's second layer (1536 -> 384).

Convolution: the stem's second and third stages (128 frames of 32x32; 48 -> 96 channels in fp32, as under autocast
the first two stages stay fp32, and 96 -> 192 in bf16) at the densities given: oneDNN's forward and weight gradient
(``convolution_backward`` with only the weight's gradient) against the listing, the sparse forward and the sparse
weight gradient.

Prints medians in ms and the ratios dense / sparse; the input gradient is dense on both paths and is not timed. The
allocator setting of ``spikeformer train`` (``reuse_memory``) is applied, so that the dense products' fresh outputs
are not page-faulted in at every call (the sparse kernels write into buffers made once).

    python benchmarks/bench_sparse.py --threads 2
    python benchmarks/bench_sparse.py --small          # where listing stops paying (layers/sparse.py: MIN_LIST_*)

``--small`` times one training step (forward and backward) of :func:`spike_linear`, its size rule switched off, against
``F.linear`` on small products (32-8192 rows), fp32 (2 % and 10 % nonzero inputs) and bf16 autocast (1 % and 2 %): the
measurements behind ``MIN_LIST_ROWS``, ``MIN_LIST_MACS`` and ``MIN_LIST_ROWS_AMX``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikeformer.engine.runtime import reuse_freed_memory
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


def run(R: int, K: int, N: int, density: float, reps: int, bf16: bool = True) -> dict:
    dtype = torch.bfloat16 if bf16 else torch.float32
    g0 = torch.Generator().manual_seed(0)
    x = (torch.rand(R, K, generator=g0) < density).to(dtype)
    w = torch.randn(N, K, generator=g0) * 0.05
    g = torch.randn(R, N, generator=g0).to(dtype)
    wb = w.to(dtype)
    lib = _native.library()
    dense_f = _median_ms(lambda: x.mm(wb.t()), reps)
    dense_w = _median_ms(lambda: g.t().mm(x), reps)
    rows_ms = _median_ms(lambda: _native.sparse_rows(x, 1.0), reps)
    rows = _native.sparse_rows(x, 1.0)
    wt = wb.t().contiguous()
    out = torch.empty(R, N, dtype=dtype)
    ptrs = [_native._ptr(t) for t in rows]
    sp_f = _median_ms(lambda: lib.sf_sparse_linear(R, N, *ptrs, _native._ptr(wt), None, _native._ptr(out), int(bf16),
                                                   _native.threads()), reps)
    gw = torch.empty(N, K)
    sp_w = _median_ms(lambda: lib.sf_sparse_linear_wgrad(R, K, N, *ptrs, _native._ptr(g), int(bf16),
                                                         _native._ptr(gw), _native.threads()), reps)
    # the results are the dense ones up to summation order (checked here too; tests/test_spike_linear.py checks it)
    torch.testing.assert_close(out.float(), x.float() @ wb.float().t(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, g.float().t() @ x.float(), rtol=1e-3, atol=1e-3)
    return dict(dense_f=dense_f, dense_w=dense_w, rows=rows_ms, sp_f=sp_f, sp_w=sp_w)


def run_conv(M: int, Cin: int, Cout: int, H: int, density: float, bf16: bool, reps: int) -> dict:
    dtype = torch.bfloat16 if bf16 else torch.float32
    g0 = torch.Generator().manual_seed(0)
    x = (torch.rand(M, Cin, H, H, generator=g0) < density).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(Cout, Cin, 3, 3, generator=g0) * 0.05).to(dtype)
    g = torch.randn(M, Cout, H, H, generator=g0).to(dtype).contiguous(memory_format=torch.channels_last)
    lib = _native.library()
    dense_f = _median_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1), reps)
    dense_w = _median_ms(lambda: torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False,
                                                                     [0, 0], 1, [False, True, False]), reps)
    x2d = x.permute(0, 2, 3, 1).view(-1, Cin)
    rows_ms = _median_ms(lambda: _native.sparse_rows(x2d, 1.0), reps)
    rows = _native.sparse_rows(x2d, 1.0)
    ptrs = [_native._ptr(t) for t in rows]
    wt = w.permute(2, 3, 1, 0).contiguous()
    out = torch.empty((M, Cout, H, H), dtype=dtype, memory_format=torch.channels_last)
    sp_f = _median_ms(lambda: lib.sf_sparse_conv3x3(M, H, H, Cin, Cout, *ptrs, _native._ptr(wt), None,
                                                    _native._ptr(out), int(bf16), _native.threads()), reps)
    gw = torch.empty(Cout, Cin, 3, 3)
    sp_w = _median_ms(lambda: lib.sf_sparse_conv3x3_wgrad(M, H, H, Cin, Cout, *ptrs, _native._ptr(g), int(bf16),
                                                          _native._ptr(gw), _native.threads()), reps)
    ref = torch.nn.functional.conv2d(x.float(), w.float(), padding=1)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    refw = torch.nn.grad.conv2d_weight(x.float(), w.shape, g.float(), padding=1)
    torch.testing.assert_close(gw, refw, rtol=1e-3, atol=1e-3)
    return dict(dense_f=dense_f, dense_w=dense_w, rows=rows_ms, sp_f=sp_f, sp_w=sp_w)


SMALL_ROWS = (32, 128, 256, 512, 1024, 2048, 4096, 8192)
SMALL_SHAPES = ((384, 384), (384, 1536), (1536, 384), (128, 128))


def run_small(a) -> None:
    import torch.nn.functional as F
    from torch import nn

    from spikeformer.layers import sparse as SL

    for name in ("MIN_LIST_ROWS", "MIN_LIST_MACS", "MIN_LIST_ROWS_AMX"):
        setattr(SL, name, 0)  # list at every size: what the rule decides between
    print(f"threads {a.threads}; one forward + backward, medians of {a.reps} (ms); ratio dense / listed (> 1: listing "
          f"pays)")
    print("| dtype | rows | in -> out | density | listed ms | dense ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for dt in a.dtypes:
        bf = dt == "bf16"
        for R in SMALL_ROWS:
            if bf and R < 1024 and R != 128:
                continue
            for K, N in SMALL_SHAPES:
                for d in ((0.01, 0.02) if bf else (0.02, 0.1)):  # bf16 on AMX lists from 2.5 % down
                    torch.manual_seed(0)
                    lin = nn.Linear(K, N)
                    x = (torch.rand(R, K) < d).float().requires_grad_()

                    def listed():
                        with torch.autocast("cpu", torch.bfloat16, enabled=bf):
                            y = SL.spike_linear(lin, x)
                        if y is None:
                            raise SystemExit(f"spike_linear declined [{R}, {K}] at {d}: the density bound")
                        y.float().sum().backward()

                    def dense():
                        with torch.autocast("cpu", torch.bfloat16, enabled=bf):
                            y = F.linear(x, lin.weight, lin.bias)
                        y.float().sum().backward()

                    t_l = min(_median_ms(listed, a.reps) for _ in range(2))
                    t_d = min(_median_ms(dense, a.reps) for _ in range(2))
                    print(f"| {dt} | {R} | {K} -> {N} | {d:.2f} | {t_l:.3f} | {t_d:.3f} | {t_d / t_l:.2f}x |",
                          flush=True)


def _row(name: str, d: float, r: dict) -> str:
    spf = r["rows"] + r["sp_f"]
    both = (r["dense_f"] + r["dense_w"]) / (spf + r["sp_w"])
    return (f"{name:>26s} {d:7.3f} | {r['dense_f']:9.2f} {spf:10.2f} {r['dense_f'] / spf:5.2f} | "
            f"{r['dense_w']:8.2f} {r['sp_w']:9.2f} {r['dense_w'] / r['sp_w']:5.2f} | {both:12.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.03, 0.05, 0.1, 0.2])
    ap.add_argument("--dtypes", nargs="+", choices=("bf16", "fp32"), default=["bf16", "fp32"],
                    help="precisions of the linear and 3x3 convolution rows (conv rows run at --densities too)")
    ap.add_argument("--no-conv", action="store_true", help="linear rows only")
    ap.add_argument("--small", action="store_true", help="small products: listing against the dense GEMM (see above)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    reuse_freed_memory()
    if _native.library() is None:
        raise SystemExit("the compiled kernels are unavailable: " + str(_native.build_error()))
    if a.small:
        return run_small(a)
    print(f"threads {a.threads}, medians of {a.reps} (ms); sparse forward = nonzero listing + products")
    print(f"{'layer':>26s} {'density':>7s} | {'dense fwd':>9s} {'sparse fwd':>10s} {'ratio':>5s} | "
          f"{'dense dW':>8s} {'sparse dW':>9s} {'ratio':>5s} | {'fwd+dW ratio':>12s}")
    for dt in a.dtypes:
        for (R, K, N) in ((8192, 384, 384), (8192, 1536, 384)):
            for d in a.densities:
                print(_row(f"{dt} [{R},{K}]x[{K},{N}]", d, run(R, K, N, d, a.reps, dt == "bf16")), flush=True)
    if a.no_conv:
        return
    for dt in a.dtypes:
        for (Cin, Cout, H) in ((96, 192, 32), (192, 384, 16)):
            for d in a.densities:
                name = f"{dt} conv {Cin}->{Cout} {H}x{H}"
                print(_row(name, d, run_conv(128, Cin, Cout, H, d, dt == "bf16", a.reps)), flush=True)


if __name__ == "__main__":
    main()
