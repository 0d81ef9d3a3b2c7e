"""fp32 CPU GEMMs through oneDNN (PyTorch's ``mkldnn`` ops) instead of the BLAS behind ``torch.mm``, on CPUs where
that is faster: the token-wise Linear of the fast path (:func:`token_linear`), and the dense products inside the
compiled kernels' autograd Functions (:func:`mm`: the input gradient ``g @ W`` of the spike products; :func:`bmm_into`:
Winograd's 36 GEMMs).

Which of the two is faster depends on the CPU and the BLAS build. PyTorch's BLAS is MKL, whose kernels on AMD CPUs are
its AVX2 "Zen" kernels even where the CPU has AVX512; oneDNN's JIT kernels use AVX512 there. Measured on an AMD EPYC
Zen 5 (AVX512, 2 threads, torch 2.14, ``benchmarks/RESULTS.md``): ``[8192, 384] x [384, 1536]`` 62 ms on MKL, 34 ms on
oneDNN; the input gradient ``[8192, 1536] x [1536, 384]`` 48 against 20 ms. On an AMD EPYC with AVX2 only, MKL's Zen
kernels were 15-20 % faster than oneDNN on the token projections of Spikformer. On Intel CPUs MKL has its AVX512
kernels. So the default is a rule on the CPU, never the clock: oneDNN on AMD CPUs with AVX512, the BLAS elsewhere.

The two sum in different orders, so a choice that changed from one process to the next would change a seeded run's
weights (a one-ulp difference flips a spike and the runs drift apart), and a run resumed after an interruption would
no longer equal the uninterrupted one; a rule on the CPU keeps them equal on one machine. ``SPIKEFORMER_CPU_GEMM``
overrides it: ``blas`` (``F.linear``/``torch.mm``, bit for bit), ``onednn``, or ``auto``, which measures once per
process (:func:`_measure_onednn`, a few hundred ms at the first fp32 call: the two GEMMs on a ``[4096, 384] x [384,
1536]`` product, alternating, best of three) and keeps the faster, at the price of that reproducibility. Results equal
the BLAS's within fp32 rounding: only the summation order differs. Products of fewer than :data:`MIN_MACS`
multiply-adds stay on the BLAS (oneDNN's call costs more there). Under bf16 autocast on a CPU without bf16
instructions the Linear runs in fp32 on the bf16 values (:mod:`.bf16`); anything else other than fp32 CPU tensors
outside autocast (bf16 autocast on CPUs with bf16 GEMMs, CUDA, builds without mkldnn) takes plain ``F.linear``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional

import torch
import torch.nn.functional as F

from ...errors import SpikeformerError
from . import bf16, build

_dnnl = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
_choice: Optional[bool] = None
_choice_lock = threading.Lock()


def _measure_onednn() -> bool:
    """Whether oneDNN's fp32 GEMM beats ``torch.mm`` by more than 5 % on a token-projection shape, on this CPU and
    thread count (interleaved, best of three after a warm-up of each)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 384, generator=g)
    w = torch.randn(1536, 384, generator=g)
    wt = w.t()
    runs = {True: lambda: _mm(a, w), False: lambda: torch.mm(a, wt)}
    best = {True: float("inf"), False: float("inf")}
    with torch.no_grad():
        for f in runs.values():
            f()
        for _ in range(3):
            for use, f in runs.items():
                t0 = time.perf_counter()
                f()
                best[use] = min(best[use], time.perf_counter() - t0)
    return best[True] < 0.95 * best[False]


def _cpu_prefers_onednn() -> bool:
    """The default rule: an AMD CPU with AVX512 (PyTorch's capability), where MKL runs its AVX2 kernels."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and build.cpu_vendor() == "AuthenticAMD"


def onednn_pays() -> bool:
    """Whether fp32 GEMMs go to oneDNN in this process: by default where :func:`_cpu_prefers_onednn`;
    ``SPIKEFORMER_CPU_GEMM=blas`` or ``onednn`` decides, ``auto`` measures once (:func:`_measure_onednn`; not
    reproducible from one process to the next)."""
    global _choice
    if _choice is None:
        with _choice_lock:
            if _choice is None:
                env = os.environ.get("SPIKEFORMER_CPU_GEMM", "").strip().lower()
                if env not in ("", "onednn", "blas", "auto"):
                    raise SpikeformerError(f"SPIKEFORMER_CPU_GEMM must be 'blas', 'onednn' or 'auto' (measure which "
                                           f"is faster here, once per process), or unset (oneDNN on AMD CPUs with "
                                           f"AVX512, the BLAS elsewhere); got {env!r}")
                if _dnnl is None:
                    _choice = False
                elif env == "auto":
                    _choice = _measure_onednn()
                elif env:
                    _choice = env == "onednn"
                else:
                    _choice = _cpu_prefers_onednn()
    return _choice


# Below this many multiply-adds a product stays on the BLAS: oneDNN's call costs about 10 us more (measured on the Zen
# 5 EPYC: [256, 64] x [64, 64] 18.5 us on MKL, 21.7 on oneDNN; [1024, 64] x [64, 256] 164 against 93 us)
MIN_MACS = 1 << 22
# Winograd's batched GEMMs go to oneDNN one matrix at a time when each has at least this many weights (K * N): measured
# there [36, 128, 384] x [36, 384, 384] 6.9 ms batched on MKL, 4.0 ms by oneDNN per matrix (with the copy into the
# output); [36, 151, 192] x [36, 192, 96] 1.0 against 1.2 ms
BMM_MIN_WEIGHTS = 192 * 384


def _onednn_for(macs: int, *ts: torch.Tensor, min_macs: int = MIN_MACS) -> bool:
    """Whether a product of ``macs`` multiply-adds over the tensors ``ts`` goes to oneDNN: fp32 CPU tensors, at least
    ``min_macs``, not traced by ``torch.compile``, and :func:`onednn_pays`."""
    return (_dnnl is not None and macs >= min_macs
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in ts)
            and not torch.compiler.is_compiling() and onednn_pays())


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (``a [M, K]``, ``b [K, N]``, any strides) for fp32 CPU matrices: oneDNN where :func:`onednn_pays`
    and the product has at least :data:`MIN_MACS` multiply-adds, else ``torch.mm``; other dtypes as :func:`.bf16.mm`
    computes them. Not for autograd: the compiled kernels' Functions call it in their own backward."""
    M, K = a.shape
    N = b.shape[1]
    if _onednn_for(M * K * N, a, b):
        return _mm(a.contiguous(), b.t())
    return bf16.mm(a, b)


def bmm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b, out=out)`` for fp32 CPU ``a [B, M, K]`` (contiguous), ``b [B, K, N]``: per matrix on
    oneDNN where :func:`onednn_pays` and ``K * N`` is at least :data:`BMM_MIN_WEIGHTS`, else ``torch.bmm``."""
    B, M, K = a.shape
    N = b.shape[2]
    if K * N < BMM_MIN_WEIGHTS or not _onednn_for(M * K * N, a, b, out, min_macs=MIN_MACS // 8):
        return torch.bmm(a, b, out=out)
    bt = b.transpose(1, 2)
    for i in range(B):
        out[i].copy_(_mm(a[i], bt[i]))
    return out


# The weight gradient g^T x of M rows goes to oneDNN (both operands as transposed views) where M is at most this or the
# gradient has no more rows than columns. Measured on the Zen 5 EPYC (2 threads), torch.mm against oneDNN, [M, N]^T
# [M, K]: M = 512: N, K = 1536, 384 2.85 against 1.54 ms, 384, 384 0.74 against 0.44; M = 2048-4096: 1.4-1.8x
# oneDNN's at every measured N, K; M = 8192: 384, 1536 48.8 against 28.9 ms, 384, 384 12.3 against 9.1, but 1536, 384
# 44.8 against 53.3 ms
WGRAD_ROWS = 4096


def weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``g^T x`` (``g [M, N]``, ``x [M, K]``: a Linear's weight gradient ``[N, K]``) for fp32 CPU matrices: oneDNN
    where it pays (:data:`WGRAD_ROWS`), else ``torch.mm``."""
    M, N = g.shape
    K = x.shape[1]
    if (M <= WGRAD_ROWS or N <= K) and _onednn_for(M * N * K, g, x):
        return _mm(g.t(), x.t())
    return torch.mm(g.t(), x)


def _mm(a: torch.Tensor, w: torch.Tensor, b=None) -> torch.Tensor:
    # a [M, K] @ w[N, K]^T (+ b) on oneDNN
    return _dnnl(a, w, b, "none", [], "")


class _DnnlLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias):
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return _mm(x2d, weight, bias)

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, g):
        x2d, weight = ctx.saved_tensors
        g = g.contiguous()
        # g @ W with W^T as a transposed view: oneDNN reads it as it is; a contiguous copy of W^T (a strided
        # transpose) cost more than the product at few rows (QKFormer at 32x32 inputs, 32 rows: [384, 1536] copied
        # in 0.62 ms for a 0.10 ms product) and it was slower at every measured shape (benchmarks/RESULTS.md)
        gx = _mm(g, weight.t()) if ctx.needs_input_grad[0] else None
        gw = weight_grad(g, x2d) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return not torch.is_autocast_enabled("cpu") and _onednn_for(x.numel() * weight.shape[0], x, weight)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [..., in]``, through oneDNN when that applies."""
    if not torch.is_autocast_enabled("cpu") and not onednn_pays():
        return F.linear(x, weight, bias)  # neither applies (the first test: this runs on every Linear of a model)
    if bf16.active(x):
        return bf16.call(linear, x, weight, bias)
    if not _usable(x, weight):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _DnnlLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*lead, y.shape[-1])


def token_linear(layer: torch.nn.Linear, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    """``layer(x)`` for ``x [..., in]``, through oneDNN when that applies; ``with_bias=False`` leaves the bias out."""
    return linear(x, layer.weight, layer.bias if with_bias else None)
