"""Token projections followed by training-mode BatchNorm + neuron, one or several reading the same tokens, as one
autograd Function: bf16 GEMMs (oneDNN, under bf16 autocast on CPUs with native bf16 products) and the compiled
BatchNorm + neuron kernel (``bn_neuron.cpp``).

Composed from separate operations (the Linear under autocast, then :class:`~.bn_neuron.BNNeuronFunction`), a
Spikformer attention block pays in backward for what autograd cannot see:

* q, k and v read the same tokens, which also feed the residual sum. Autograd adds their four input gradients with
  three element-wise ``add_`` passes over ``[T, B, N, D]``; here the first input gradient is one GEMM that starts
  from the residual's gradient (``addmm``) and the others accumulate in place (``addmm_``), in the GEMM's fp32
  accumulators. The residual's gradient reaches the Function through ``keep_input``: the input itself is returned
  as the last output, and the caller adds its branch to that output instead of to the input.
* The weight gradient ``dL/dz^T @ x`` sums over all ``T*B*N`` tokens with a transposed left operand, where oneDNN's
  bf16 GEMM is slowest when the result has fewer rows than columns: ``[384, 8192] x [8192, 1536]`` took 8.9 ms,
  ``[1536, 8192] x [8192, 384]`` (the transposed result) 6.4 ms on an Intel Xeon with AMX. The product is formed with
  the longer side as rows and transposed back.

Numerics: the forward is autocast's (the input and weight rounded to bf16, the same GEMM, the kernel's spikes), so
spikes equal the composed path's bit for bit. Gradients differ only where the composed path rounds to bf16 between the
additions: the sum of the residual and branch gradients is rounded once, at the end.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import bn_neuron, build
from .neuron import _like, _params

BF16 = torch.bfloat16


class LinearBNNeuronFunction(torch.autograd.Function):
    """``(s_1, ..., s_n, mean_1, var_1, ..., mean_n, var_n[, x])``: for each branch ``i`` the spikes of
    ``neuron_i(bn_i(x @ W_i^T))`` on tokens ``x [..., K]``, the per-channel batch mean and biased variance (float64,
    for the running statistics, which the caller updates) and, with ``keep_input``, ``x`` itself (see the module
    docstring). ``branches``: per branch ``(spec, surrogate, eps)``; ``tensors``: per branch the Linear's weight,
    its bias (or ``None``; left out of the product: the batch mean absorbs it, its gradient is zero), BatchNorm's
    weight and bias."""

    @staticmethod
    def forward(ctx, x, branches, keep_input, *tensors):
        xb = x.to(BF16).contiguous()
        x2d = xb.view(-1, xb.shape[-1])
        spikes, stats, saved, params = [], [], [], []
        for i, (spec, surrogate, eps) in enumerate(branches):
            weight, _, bn_w, bn_b = tensors[4 * i:4 * i + 4]
            wb = weight.to(BF16)
            z = torch.mm(x2d, wb.t()).view(*xb.shape[:-1], weight.shape[0])
            p = _params(z, None, spec, surrogate)
            s, w32, ab, chan = bn_neuron.train_forward(z, bn_w, bn_b, eps, p)
            spikes.append(s)
            stats += [chan[0].clone(), chan[1].clone()]
            saved += [wb, z, w32, ab, chan]
            params.append(p)
        ctx.save_for_backward(xb, *saved)
        ctx.params, ctx.keep_input, ctx.x_dtype = params, keep_input, x.dtype
        ctx.wdtypes = [(tensors[4 * i].dtype, tensors[4 * i + 2].dtype) for i in range(len(branches))]
        ctx.mark_non_differentiable(*stats)
        out = spikes + stats
        if keep_input:
            out.append(x.view_as(x))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        xb, *saved = ctx.saved_tensors
        n = len(ctx.params)
        x2d = xb.view(-1, xb.shape[-1])
        K = x2d.shape[1]
        g_kept = grads[3 * n] if ctx.keep_input else None
        gx = None
        out = []
        for i in range(n):
            wb, z, w32, ab, chan = saved[5 * i:5 * i + 5]
            p = ctx.params[i]
            p.nthreads = build.threads()
            wdtype, bn_dtype = ctx.wdtypes[i]
            gz, g_bn_w, g_bn_b = bn_neuron.train_backward(grads[i], z, w32, ab, chan, p, bn_dtype)
            C = z.shape[-1]
            gz2 = gz.view(-1, C)
            if ctx.needs_input_grad[3 + 4 * i]:
                gw = _weight_grad(gz2, x2d, C, K, wdtype)
            else:
                gw = None
            g_bias = torch.zeros(C, dtype=wdtype) if ctx.needs_input_grad[4 + 4 * i] else None
            out += [gw, g_bias, g_bn_w, g_bn_b]
            if not ctx.needs_input_grad[0]:
                continue
            if gx is None:
                if g_kept is None:
                    gx = torch.mm(gz2, wb)
                else:
                    gx = torch.addmm(_like(g_kept, xb, BF16).view(-1, K), gz2, wb)
            else:
                gx.addmm_(gz2, wb)
        if gx is not None:
            gx = gx.view(xb.shape).to(ctx.x_dtype)
        return (gx, None, None, *out)


def _weight_grad(gz2: torch.Tensor, x2d: torch.Tensor, C: int, K: int, dtype: torch.dtype) -> torch.Tensor:
    """``gz2^T @ x2d`` ``[C, K]`` in ``dtype``, the product formed with the longer side as its rows."""
    if C >= K:
        return torch.mm(gz2.t(), x2d).to(dtype)
    out = torch.empty((C, K), dtype=dtype)
    out.t().copy_(torch.mm(x2d.t(), gz2))
    return out


def supports(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> bool:
    """Whether :class:`LinearBNNeuronFunction` runs these tokens here: a CPU tensor with the feature dimension of every
    weight innermost, more than one token, fp32 CPU weights, the compiled library."""
    K = x.shape[-1] if x.dim() >= 2 else -1
    return (x.device.type == "cpu" and x.dtype in (torch.float32, BF16) and x.dim() >= 2 and x.numel() // K > 1
            and all(w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 and w.shape[1] == K
                    for w in weights)
            and build.available())


def apply(x: torch.Tensor, branches: Sequence[tuple], tensors: Sequence[Optional[torch.Tensor]],
          keep_input: bool) -> tuple:
    """:class:`LinearBNNeuronFunction` on ``x`` (see there)."""
    return LinearBNNeuronFunction.apply(x, tuple(branches), keep_input, *tensors)
