"""A token-wise Linear whose fp32 CPU GEMMs run through oneDNN (PyTorch's ``mkldnn`` ops) instead of the BLAS
behind ``torch.mm``, on CPUs where that is faster.

Which of the two is faster depends on the CPU and the BLAS build: where the BLAS dispatches to a slow code path,
oneDNN's matmul was about twice as fast (``benchmarks/RESULTS.md``); on an AMD EPYC (AVX2) with PyTorch's MKL 2024.2,
whose Zen kernels are in use, the BLAS is 15-20 % faster than oneDNN on the token projections of Spikformer.

The two sum in different orders, so a choice that changed from one process to the next would change a seeded run's
weights (a one-ulp difference flips a spike and the runs drift apart), and a run resumed after an interruption would
no longer equal the uninterrupted one. So the choice is never made by the clock unless asked: ``SPIKEFORMER_CPU_GEMM``
is ``blas`` (the default: ``F.linear``, bit for bit), ``onednn``, or ``auto``, which measures once per process
(:func:`_measure_onednn`, a few hundred ms at the first fp32 call: the two GEMMs on a ``[4096, 384] x [384, 1536]``
product, alternating, best of three) and keeps the faster, at the price of that reproducibility. Results equal
``F.linear`` within fp32 rounding: only the summation order differs. Under bf16 autocast on a CPU without bf16
instructions the product runs in fp32 on the bf16 values (:mod:`.bf16`); anything else other than fp32 CPU tensors
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
from . import bf16

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


def onednn_pays() -> bool:
    """Whether fp32 token projections go to oneDNN in this process: ``SPIKEFORMER_CPU_GEMM=blas`` (default) or
    ``onednn``, or ``auto`` to measure once (:func:`_measure_onednn`; not reproducible from one process to the
    next)."""
    global _choice
    if _choice is None:
        with _choice_lock:
            if _choice is None:
                env = os.environ.get("SPIKEFORMER_CPU_GEMM", "").strip().lower() or "blas"
                if env not in ("onednn", "blas", "auto"):
                    raise SpikeformerError(f"SPIKEFORMER_CPU_GEMM must be 'blas' (the default), 'onednn' or 'auto' "
                                           f"(measure which is faster here, once per process); got {env!r}")
                if env == "auto":
                    _choice = _dnnl is not None and _measure_onednn()
                else:
                    _choice = env == "onednn"
    return _choice


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
        gx = _mm(g, weight.t().contiguous()) if ctx.needs_input_grad[0] else None  # the weight copy is small
        # dL/dW = g^T x: through oneDNN it would need two [M, *] transposed copies, which cost more than it saves
        gw = torch.mm(g.t(), x2d) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _dnnl is not None
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and onednn_pays()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [..., in]``, through oneDNN when that applies."""
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
