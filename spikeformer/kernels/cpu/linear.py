"""A token-wise Linear whose fp32 CPU GEMMs run through oneDNN (PyTorch's ``mkldnn`` ops) instead of the BLAS
behind ``torch.mm``.

On CPUs where the BLAS dispatches to a slow code path (MKL on AMD processors), oneDNN's matmul is markedly faster
(see ``benchmarks/RESULTS.md``). Results equal ``F.linear`` within fp32 rounding: only the summation order differs.
Anything other than fp32 CPU tensors outside autocast (bf16 autocast already goes to oneDNN, CUDA, builds without
mkldnn) takes plain ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

_dnnl = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


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
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [..., in]``, through oneDNN when that applies."""
    if not _usable(x, weight):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _DnnlLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*lead, y.shape[-1])


def token_linear(layer: torch.nn.Linear, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    """``layer(x)`` for ``x [..., in]``, through oneDNN when that applies; ``with_bias=False`` leaves the bias out."""
    return linear(x, layer.weight, layer.bias if with_bias else None)
