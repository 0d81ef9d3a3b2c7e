"""Binding of the compiled BatchNorm + neuron kernel (``bn_neuron.cpp``).

Training: one pass computes the per-channel statistics and a second normalises each input on the fly as the
membrane integrates it, so the BatchNorm output is never written, read or kept for backward; backward recomputes
the membrane from ``x``, runs BPTT and adds up BatchNorm's two per-channel sums in the same pass, then turns the
result into ``dL/dx`` in place. Eval: the running statistics become a per-channel scale and shift of the neuron's
input. The normalised input is rounded to ``x``'s dtype, as an unfused BatchNorm output stored in that dtype is;
the statistics are summed in another order than PyTorch's kernel, so a pre-activation may differ by an ulp from
the unfused reference (``kernels/torch/bn_neuron.py``) and flip a spike.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..params import NeuronParams, surrogate_kind
from ..torch import bn_neuron as torch_bn_neuron
from . import bf16, build, ops
from .build import f32, is_bf16, ptr, threads
from .neuron import SURROGATES, Params, _like, _params, params

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(
    sf_channel_stats=(None, [_i64, _i64, _vp, _ci, _vp, _vp, _ci]),
    sf_bn_forward=(None, [ctypes.POINTER(Params), _i64, _vp, _vp, _vp, _ci, _vp]),
    sf_bn_backward=(None, [ctypes.POINTER(Params), _i64, _vp, _vp, _vp, _vp, _ci, _vp, _vp, _vp, _vp]),
    sf_bn_input_grad=(None, [_i64, _i64, _vp, _ci, _vp, _vp, _vp, _vp, _ci]),
    sf_bn_train_forward=(None, [ctypes.POINTER(Params), _i64, _vp, _ci, _vp, _vp, ctypes.c_double, _vp, _vp, _vp,
                                _ci]),
    sf_bn_train_backward=(None, [ctypes.POINTER(Params), _i64, _vp, _vp, _vp, _vp, _ci, _vp, _ci, _vp, _vp]),
    sf_bn_running_update=(None, [_i64, _vp, _vp, _vp, _vp, _vp, ctypes.c_double, ctypes.c_double]),
)


def running_update(running_mean: torch.Tensor, running_var: torch.Tensor, mean64: torch.Tensor, var64: torch.Tensor,
                   shift64: Optional[torch.Tensor], f: float, unbias: float) -> bool:
    """BatchNorm's running-statistics update in one call: ``r = r * (1 - f) + f * m`` for the batch mean
    (``+ shift64`` where given) and the biased variance ``* unbias``, rounded as PyTorch's ``mul_``/``add_`` do
    (float32 running statistics). Returns False, doing nothing, where it does not apply (other dtypes or layouts,
    no compiled library); the caller then updates with tensor operations."""
    tensors = (running_mean, running_var)
    if not (all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu" for t in tensors)
            and mean64.dtype == var64.dtype == torch.float64 and mean64.is_contiguous() and var64.is_contiguous()
            and (shift64 is None or (shift64.dtype == torch.float64 and shift64.is_contiguous()))
            and build.available()):
        return False
    build.library().sf_bn_running_update(running_mean.numel(), ptr(running_mean), ptr(running_var), ptr(mean64),
                                         ptr(var64), ptr(shift64), float(f), float(unbias))
    return True


def _params_of(x: torch.Tensor, p: NeuronParams) -> Params:
    """The C structure of a BatchNorm + neuron call on ``x`` (a fixed rate: no rate tensor)."""
    return params(x, None, p)


def bn_inference(x: torch.Tensor, C: int, a: torch.Tensor, b: torch.Tensor, spec, surrogate) -> torch.Tensor:
    """Spikes of the neuron driven by ``x * a + b`` (per channel, the innermost dimension of ``x``'s memory):
    BatchNorm with fixed statistics folded into the recursion, nothing saved."""
    if torch.compiler.is_compiling():
        return ops.bn_neuron_eval_op(x, a, b, *ops.neuron_args(NeuronParams.from_spec(spec, surrogate)))
    p = _params(x, None, spec, surrogate)
    s = torch.empty_like(x)
    build.library().sf_bn_forward(ctypes.byref(p), C, ptr(a), ptr(b), ptr(x), is_bf16(x), ptr(s))
    return s


def bn_scale_shift(weight, bias, mean64, invstd64) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm as a per-channel affine map of its input, ``y = x * a + b`` (computed in float64, returned fp32):
    ``a = weight * invstd``, ``b = bias - mean * a``."""
    w = weight.detach().double()
    return (w * invstd64).float(), (bias.detach().double() - mean64 * w * invstd64).float()


def channel_stats(x: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance (float64) of ``x`` whose memory is ``[R, C]``."""
    mean = torch.empty(C, dtype=torch.float64)
    var = torch.empty(C, dtype=torch.float64)
    build.library().sf_channel_stats(x.numel() // C, C, ptr(x), is_bf16(x), ptr(mean), ptr(var), threads())
    return mean, var


class BNNeuronFunction(torch.autograd.Function):
    """Training-mode BatchNorm (batch statistics) and a neuron in one kernel: ``x`` -> spikes of the neuron driven
    by ``(x - mean) / sqrt(var + eps) * weight + bias``. ``x``'s memory is ``[T, ..., C]`` (channel innermost).
    Saves ``x`` and four ``[C]`` vectors; the normalised input is never stored (forward) and ``dL/dy`` only in
    the buffer that becomes ``dL/dx`` (backward). Running statistics are updated by the caller from the returned
    ``mean`` and ``var``."""

    @staticmethod
    def forward(ctx, x, weight, bias, bias_left_out, C, eps, spec, surrogate, spikes_dtype=None):
        # bias_left_out: a bias the producer of x did not add (layers/fused_bn.py: linear_bn_neuron). The batch
        # mean absorbs it, so the output does not depend on it and its gradient is exactly zero.
        # spikes_dtype: torch.bfloat16 for bf16 spikes of an fp32 x (a bf16 consumer), else None (x's dtype)
        p = _params(x, None, spec, surrogate)
        s, w, ab, chan = train_forward(x, weight, bias, eps, p, spikes_dtype)
        ctx.save_for_backward(x, w, ab, chan)
        ctx.params, ctx.wdtype = p, weight.dtype
        mean64, var64 = chan[0].clone(), chan[1].clone()
        ctx.mark_non_differentiable(mean64, var64)
        return s, mean64, var64

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, grad_spikes, _gm, _gv):
        x, w, ab, chan = ctx.saved_tensors
        p = ctx.params
        p.nthreads = threads()
        gx, gw, gb = train_backward(grad_spikes, x, w, ab, chan, p, ctx.wdtype)
        gw = gw if ctx.needs_input_grad[1] else None
        gb = gb if ctx.needs_input_grad[2] else None
        g_left = torch.zeros(w.shape[0], dtype=ctx.wdtype) if ctx.needs_input_grad[3] else None
        return gx, gw, gb, g_left, None, None, None, None, None


def train_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, p: Params,
                  spikes_dtype: Optional[torch.dtype] = None):
    """The training-mode forward in one call (statistics, scale and shift with :func:`bn_scale_shift`'s arithmetic,
    spikes): at a few hundred calls per training step the per-call cost of separate small tensor operations added
    up (QKFormer's last stage: 4 tokens). Returns ``(spikes, float32 weight, ab [2, C] = (a, b), chan [3, C] float64
    = (mean, biased variance, invstd))``, what :func:`train_backward` takes. ``spikes_dtype=torch.bfloat16`` with an
    fp32 ``x``: the spikes in bf16 (exact), for a bf16 consumer, with no cast pass over them."""
    C = weight.shape[0]
    w, b = f32(weight), f32(bias)
    chan = torch.empty((3, C), dtype=torch.float64)
    ab = torch.empty((2, C), dtype=torch.float32)
    s_bf16 = int(spikes_dtype == torch.bfloat16 and x.dtype == torch.float32)
    s = torch.empty_like(x, dtype=torch.bfloat16) if s_bf16 else torch.empty_like(x)
    build.library().sf_bn_train_forward(ctypes.byref(p), C, ptr(x), is_bf16(x), ptr(w), ptr(b), float(eps),
                                        ptr(chan), ptr(ab), ptr(s), s_bf16)
    return s, w, ab, chan


def train_backward(grad_spikes, x: torch.Tensor, w: torch.Tensor, ab: torch.Tensor, chan: torch.Tensor, p: Params,
                   wdtype: torch.dtype):
    """``(dL/dx, dL/dweight, dL/dbias)`` of :func:`train_forward` in one call, from what it returned."""
    C = w.shape[0]
    # the gradient of bf16 spikes of an fp32 x (train_forward's spikes_dtype) is read in bf16, as it comes
    gs_dtype = torch.bfloat16 if (grad_spikes is not None and grad_spikes.dtype == torch.bfloat16
                                  and x.dtype == torch.float32) else x.dtype
    gs = torch.zeros_like(x) if grad_spikes is None else _like(grad_spikes, x, gs_dtype)
    gx = torch.empty_like(x)
    gwb = torch.empty((2, C), dtype=torch.float32)
    build.library().sf_bn_train_backward(ctypes.byref(p), C, ptr(ab), ptr(chan), ptr(w), ptr(x), is_bf16(x),
                                         ptr(gs), is_bf16(gs), ptr(gx), ptr(gwb))
    return gx, gwb[0].to(wdtype), gwb[1].to(wdtype)


class NativeBNNeuron:
    """``NativeBNNeuron.apply(x, weight, bias, bias_left_out, C, eps, spec, surrogate) -> (spikes, mean, var)``:
    :class:`BNNeuronFunction` in eager mode, the custom operator ``spikeformer::bn_neuron`` under
    ``torch.compile``."""

    @staticmethod
    def apply(x, weight, bias, bias_left_out, C, eps, spec, surrogate, spikes_dtype=None):
        if torch.compiler.is_compiling():  # spikes in x's dtype
            return ops.bn_neuron_op(x, weight, bias, bias_left_out, float(eps),
                                    *ops.neuron_args(NeuronParams.from_spec(spec, surrogate)))
        return BNNeuronFunction.apply(x, weight, bias, bias_left_out, C, eps, spec, surrogate, spikes_dtype)


def bn_backward(grad_spikes, x, weight, a, b, mean64, invstd64, p: Params):
    """``(dL/dx, dL/dweight, dL/dbias)`` of the training-mode BatchNorm + neuron kernel by separate calls and tensor
    arithmetic: the reference :func:`train_backward` equals bit for bit (tests/layers/test_bn_neuron.py)."""
    C = weight.shape[0]
    gs = torch.zeros_like(x) if grad_spikes is None else _like(grad_spikes, x, x.dtype)
    gx = torch.empty_like(x)
    sum_g = torch.empty(C, dtype=torch.float64)
    sum_gxc = torch.empty(C, dtype=torch.float64)
    bf = is_bf16(x)
    mean = mean64.float()
    build.library().sf_bn_backward(ctypes.byref(p), C, ptr(a), ptr(b), ptr(mean), ptr(x), bf, ptr(gs), ptr(gx),
                                   ptr(sum_g), ptr(sum_gxc))
    R = x.numel() // C
    w = weight.detach().double()
    grad_w = sum_gxc * invstd64  # sum dL/dy * xhat
    # dL/dx = w invstd (g - mean(g) - xhat mean(g xhat)) = g A + x B + D
    A = w * invstd64
    B = -A * invstd64 * grad_w / R
    D = -A * sum_g / R - B * mean64
    A, B, D = A.float(), B.float(), D.float()  # kept alive across the call
    build.library().sf_bn_input_grad(R, C, ptr(x), bf, ptr(gx), ptr(A), ptr(B), ptr(D), threads())
    return gx, grad_w.to(weight.dtype), sum_g.to(weight.dtype)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def supports(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, training: bool, spec, surrogate,
             bias_left_out=None) -> bool:
    """Whether the compiled kernel can run this call (else the unfused reference runs it). Eval-mode statistics
    have no compiled backward: a call that needs gradients there runs unfused."""
    C = weight.shape[0]
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.numel() > 0
        and surrogate_kind(surrogate) in SURROGATES
        and not (spec.leaky and spec.tau is None)  # a PLIF: the reference says why not
        and x.dim() >= 2 and x.shape[-1] == C and x.is_contiguous()
        and (x.numel() // C > 1 if training else bias_left_out is None and not _needs_grad(x, weight, bias))
        and build.available()
    )


def bn_neuron(x, weight, bias, running_mean, running_var, eps: float, training: bool, spec, surrogate,
              bias_left_out: Optional[torch.Tensor] = None):
    """The BatchNorm + neuron operation on CPU for ``x`` ``[T, ..., C]`` (contiguous, channel last; the signature of
    ``kernels.torch.bn_neuron.bn_neuron``): the compiled kernel where it can run the call, the unfused reference
    otherwise."""
    if not supports(x, weight, bias, training, spec, surrogate, bias_left_out):
        return torch_bn_neuron.bn_neuron(x, weight, bias, running_mean, running_var, eps, training, spec, surrogate,
                                         bias_left_out)
    C = weight.shape[0]
    if not training:
        a, b = bn_scale_shift(weight, bias, running_mean.double(), (running_var.double() + eps).rsqrt())
        return bn_inference(x, C, a, b, spec, surrogate), None, None
    return NativeBNNeuron.apply(x, weight, bias, bias_left_out, C, eps, spec, surrogate)
