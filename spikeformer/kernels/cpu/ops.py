"""The compiled CPU kernels as PyTorch custom operators (``torch.ops.spikeformer.*``), for ``torch.compile``.

The bindings call the shared library through ``ctypes``, which TorchDynamo cannot trace: left alone, a compiled
model breaks its graph at every neuron, every fused BatchNorm + neuron, every attention and pool. Here each kernel
is one ``torch.library.custom_op``: an opaque node of the graph with a fake implementation (the shapes, dtypes and
memory layout of its outputs, so the compiler plans around it without running it) and an autograd formula that is
itself a custom operator, so the backward graph traces through too. The implementations call the same binding
functions as the eager ``autograd.Function``\\ s, so a compiled model computes the same bits.

The bindings route to these operators only while TorchDynamo traces (``torch.compiler.is_compiling()``); eager
calls keep their ``autograd.Function``, since a custom operator's dispatch adds Python overhead to every call. The
neuron's settings (a :class:`~spikeformer.kernels.params.NeuronParams`) cross the operator boundary as plain numbers
and flags.

What is not an operator: the products over nonzero spikes (``sparse.py``). Whether to use them is decided by the
input's density, a data-dependent choice that would break the graph; while compiling, :func:`.sparse.sparse_rows`
reports every input as too dense, so the callers run their dense product (the outputs differ from eager's by the
order of fp32 sums only), and the backend's ``sparse_linear`` / ``sparse_conv3x3`` run the dense reference. Nor is
the token Linear (``linear.py``): it is PyTorch's own oneDNN operator, which traces, but inductor lowers it only for
a frozen weight, so while compiling it is ``F.linear`` (again the same sums in another order).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
from torch import Tensor

from ..params import NeuronParams, ResetMode, SurrogateKind
from . import build
from .build import is_bf16, ptr

_F32 = torch.float32


def neuron_args(p: NeuronParams) -> tuple:
    """A neuron's settings as the operators take them (after the tensors)."""
    return (p.hard, p.v_threshold, p.v_reset, p.detach_reset, p.decay_input, p.leaky, p.tau, p.surrogate.value,
            p.alpha)


def _neuron_params(hard: bool, v_threshold: float, v_reset: float, detach_reset: bool, decay_input: bool,
                   leaky: bool, tau: Optional[float], surrogate: str, alpha: float) -> NeuronParams:
    return NeuronParams(ResetMode.HARD if hard else ResetMode.SOFT, v_threshold, v_reset, detach_reset, decay_input,
                        leaky, tau, SurrogateKind(surrogate), alpha)


def _no_tensor(like: Tensor) -> Tensor:
    # an operator returns tensors only: an empty one stands for "not computed"
    return like.new_empty((0,), dtype=_F32)


# ------------------------------------------------------------------------------------------------------ neuron
@torch.library.custom_op("spikeformer::neuron", mutates_args=(), device_types="cpu")
def neuron_op(x: Tensor, k: Optional[Tensor], v0: Optional[Tensor], hard: bool, v_threshold: float,
              v_reset: float, detach_reset: bool, decay_input: bool, leaky: bool, tau: Optional[float],
              surrogate: str, alpha: float, want_state: bool) -> tuple[Tensor, Tensor]:
    """``(spikes, final membrane)`` of the compiled neuron kernel (``neuron.py``) on ``x`` ``[T, ...]``; the
    membrane is an empty tensor unless ``want_state``."""
    from . import neuron as nb

    p = _neuron_params(hard, v_threshold, v_reset, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    xd = nb._dense(x)
    s, v_last = nb._forward(xd, nb._v0(v0, xd), nb.params(xd, k, p), want_state)
    if xd is not x:  # the fake gives the input's layout
        s = nb._like(s, x)
        v_last = None if v_last is None else nb._like(v_last, x[0])
    return s, _no_tensor(x) if v_last is None else v_last


@neuron_op.register_fake
def _(x, k, v0, hard, v_threshold, v_reset, detach_reset, decay_input, leaky, tau, surrogate, alpha, want_state):
    return torch.empty_like(x), torch.empty_like(x[0], dtype=_F32) if want_state else _no_tensor(x)


@torch.library.custom_op("spikeformer::neuron_backward", mutates_args=(), device_types="cpu")
def neuron_backward_op(x: Tensor, k: Optional[Tensor], v0: Optional[Tensor], grad_spikes: Optional[Tensor],
                       grad_v_last: Optional[Tensor], hard: bool, v_threshold: float, v_reset: float,
                       detach_reset: bool, decay_input: bool, leaky: bool, tau: Optional[float], surrogate: str,
                       alpha: float, want_k: bool, want_v0: bool) -> tuple[Tensor, Tensor, Tensor]:
    """BPTT of :func:`neuron_op`: ``(dL/dx, dL/dk as a 0-dim fp32 tensor, dL/dv0 per neuron in fp32)``; the
    last two are zero / empty unless asked for."""
    from . import neuron as nb

    p = _neuron_params(hard, v_threshold, v_reset, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    xd = nb._dense(x)
    cp = nb.params(xd, k, p)
    v0c = nb._v0(v0, xd)
    if grad_spikes is None:
        gs = torch.zeros_like(xd, dtype=_F32)
    else:
        gs = nb._like(grad_spikes, xd, grad_spikes.dtype if grad_spikes.dtype in (_F32, torch.bfloat16) else _F32)
    gvl = None if grad_v_last is None else nb._like(grad_v_last, xd[0], _F32)
    gx = torch.empty_like(xd)
    want_v0 = want_v0 and v0 is not None
    gv0 = torch.empty_like(xd[0], dtype=_F32) if want_v0 else None
    total = build.library().sf_backward(
        ctypes.byref(cp), ptr(xd), is_bf16(xd), ptr(v0c), ptr(gs), is_bf16(gs), ptr(gvl), ptr(gx), ptr(gv0),
        int(want_k and k is not None))
    gx = gx if xd is x else nb._like(gx, x)
    gk = torch.tensor(total if want_k else 0.0, dtype=_F32)
    return gx, gk, _no_tensor(x) if gv0 is None else gv0


@neuron_backward_op.register_fake
def _(x, k, v0, grad_spikes, grad_v_last, hard, v_threshold, v_reset, detach_reset, decay_input, leaky, tau,
      surrogate, alpha, want_k, want_v0):
    gv0 = torch.empty_like(x[0], dtype=_F32) if (want_v0 and v0 is not None) else _no_tensor(x)
    return torch.empty_like(x), x.new_empty((), dtype=_F32), gv0


def _neuron_setup(ctx, inputs, output):
    x, k, v0, *settings = inputs
    ctx.save_for_backward(x, k, v0)
    ctx.settings, ctx.want_state = tuple(settings[:-1]), settings[-1]


def _neuron_backward(ctx, grad_spikes, grad_v_last):
    x, k, v0 = ctx.saved_tensors
    want_k = k is not None and ctx.needs_input_grad[1]
    want_v0 = v0 is not None and ctx.needs_input_grad[2]
    gx, gk, gv0 = neuron_backward_op(x, k, v0, grad_spikes, grad_v_last if ctx.want_state else None,
                                     *ctx.settings, want_k, want_v0)
    grad_k = gk.reshape(k.shape) if want_k else None
    grad_v0 = gv0.sum_to_size(v0.shape).to(v0.dtype) if want_v0 else None
    return (gx, grad_k, grad_v0) + (None,) * 10


neuron_op.register_autograd(_neuron_backward, setup_context=_neuron_setup)


# ---------------------------------------------------------------------------------------- BatchNorm + neuron
@torch.library.custom_op("spikeformer::bn_neuron", mutates_args=(), device_types="cpu")
def bn_neuron_op(x: Tensor, weight: Tensor, bias: Tensor, bias_left_out: Optional[Tensor], eps: float, hard: bool,
                 v_threshold: float, v_reset: float, detach_reset: bool, decay_input: bool, leaky: bool,
                 tau: Optional[float], surrogate: str, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode BatchNorm and a neuron in one kernel (``bn_neuron.py``, ``NativeBNNeuron``) on ``x``
    ``[..., C]`` (contiguous, channel last): ``(spikes, batch mean, biased batch variance)``, the statistics in
    float64. ``bias_left_out`` is a bias the producer of ``x`` did not add: the output does not depend on it."""
    from . import bn_neuron as bb

    p = _neuron_params(hard, v_threshold, v_reset, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    s, _, _, chan = bb.train_forward(x, weight, bias, eps, bb._params_of(x, p))
    return s, chan[0].clone(), chan[1].clone()


@bn_neuron_op.register_fake
def _(x, weight, bias, bias_left_out, eps, *settings):
    C = weight.shape[0]
    return torch.empty_like(x), x.new_empty((C,), dtype=torch.float64), x.new_empty((C,), dtype=torch.float64)


@torch.library.custom_op("spikeformer::bn_neuron_backward", mutates_args=(), device_types="cpu")
def bn_neuron_backward_op(grad_spikes: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean64: Tensor,
                          var64: Tensor, eps: float, hard: bool, v_threshold: float, v_reset: float,
                          detach_reset: bool, decay_input: bool, leaky: bool, tau: Optional[float], surrogate: str,
                          alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`bn_neuron_op`: ``(dL/dx, dL/dweight, dL/dbias)``."""
    from . import bn_neuron as bb

    p = _neuron_params(hard, v_threshold, v_reset, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    invstd64 = (var64 + eps).rsqrt()  # the forward's, bit for bit (1 / sqrt in the kernel)
    ab = torch.stack(bb.bn_scale_shift(weight, bias, mean64, invstd64))
    chan = torch.stack((mean64, var64, invstd64))
    gx, gw, gb = bb.train_backward(grad_spikes, x, build.f32(weight), ab, chan, bb._params_of(x, p), weight.dtype)
    return gx, gw.clone(), gb.clone()  # views of one buffer: a custom operator's outputs may not alias


@bn_neuron_backward_op.register_fake
def _(grad_spikes, x, weight, *rest):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _bn_neuron_setup(ctx, inputs, output):
    x, weight, bias, bias_left_out, eps, *settings = inputs
    _, mean64, var64 = output
    ctx.save_for_backward(x, weight, bias, mean64, var64)
    ctx.eps, ctx.settings = eps, tuple(settings)
    ctx.mark_non_differentiable(mean64, var64)


def _bn_neuron_backward(ctx, grad_spikes, _gm, _gv):
    x, weight, bias, mean64, var64 = ctx.saved_tensors
    gx, gw, gb = bn_neuron_backward_op(grad_spikes, x, weight, bias, mean64, var64, ctx.eps, *ctx.settings)
    g_left = torch.zeros_like(weight) if ctx.needs_input_grad[3] else None  # see bn_neuron_op
    return ((gx, gw if ctx.needs_input_grad[1] else None, gb if ctx.needs_input_grad[2] else None, g_left)
            + (None,) * 10)


bn_neuron_op.register_autograd(_bn_neuron_backward, setup_context=_bn_neuron_setup)


@torch.library.custom_op("spikeformer::bn_neuron_eval", mutates_args=(), device_types="cpu")
def bn_neuron_eval_op(x: Tensor, a: Tensor, b: Tensor, hard: bool, v_threshold: float, v_reset: float,
                      detach_reset: bool, decay_input: bool, leaky: bool, tau: Optional[float], surrogate: str,
                      alpha: float) -> Tensor:
    """Spikes of the neuron driven by ``x * a + b`` per channel (BatchNorm with fixed statistics folded into the
    recursion, ``bn_neuron.bn_inference``); no gradient."""
    from . import bn_neuron as bb

    p = _neuron_params(hard, v_threshold, v_reset, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    s = torch.empty_like(x)
    build.library().sf_bn_forward(ctypes.byref(bb._params_of(x, p)), a.shape[0], ptr(a), ptr(b), ptr(x), is_bf16(x),
                                  ptr(s))
    return s


@bn_neuron_eval_op.register_fake
def _(x, a, b, *settings):
    return torch.empty_like(x)


# --------------------------------------------------------------------------------------------------- attention
@torch.library.custom_op("spikeformer::attention", mutates_args=(), device_types="cpu")
def attention_op(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float) -> Tensor:
    """``(Q K^T V) * scale`` per head of tokens ``[..., N, C]`` (``attention.py``), fp32, contiguous."""
    from .attention import attention_forward

    return attention_forward(q, k, v, heads, scale)


@attention_op.register_fake
def _(q, k, v, heads, scale):
    return q.new_empty(q.shape, dtype=_F32)


@torch.library.custom_op("spikeformer::attention_backward", mutates_args=(), device_types="cpu")
def attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int,
                          scale: float) -> tuple[Tensor, Tensor, Tensor]:
    from .attention import attention_backward

    return attention_backward(grad_out, q, k, v, heads, scale)


@attention_backward_op.register_fake
def _(grad_out, q, k, v, heads, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_setup(ctx, inputs, output):
    q, k, v, heads, scale = inputs
    ctx.save_for_backward(q, k, v)
    ctx.heads, ctx.scale = heads, scale


def _attention_backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    return attention_backward_op(grad_out, q, k, v, ctx.heads, ctx.scale) + (None, None)


attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


# ---------------------------------------------------------------------------------------------------- max-pool
def _pooled(n: int) -> int:
    return (n - 1) // 2 + 1


@torch.library.custom_op("spikeformer::max_pool", mutates_args=(), device_types="cpu")
def max_pool_op(x: Tensor, save_argmax: bool) -> tuple[Tensor, Tensor]:
    """3x3 / stride 2 / padding 1 max-pool of channels-last frames ``[N, C, H, W]`` (``pool.py``):
    ``(pooled frames, channels-last; argmax as bytes [N, Ho, Wo, C] if save_argmax, else empty)``."""
    from .pool import pool_forward

    y, idx = pool_forward(x, save_argmax)
    return y, torch.empty((0,), dtype=torch.uint8) if idx is None else idx


@max_pool_op.register_fake
def _(x, save_argmax):
    N, C, H, W = x.shape
    Ho, Wo = _pooled(H), _pooled(W)
    y = x.new_empty((N, C, Ho, Wo)).contiguous(memory_format=torch.channels_last)
    idx = x.new_empty((N, Ho, Wo, C) if save_argmax else (0,), dtype=torch.uint8)
    return y, idx


@torch.library.custom_op("spikeformer::max_pool_backward", mutates_args=(), device_types="cpu")
def max_pool_backward_op(grad_out: Tensor, argmax: Tensor, height: int, width: int) -> Tensor:
    from .pool import pool_backward

    N, C = grad_out.shape[:2]
    return pool_backward(grad_out, argmax, (N, C, height, width))


@max_pool_backward_op.register_fake
def _(grad_out, argmax, height, width):
    N, C = grad_out.shape[:2]
    return grad_out.new_empty((N, C, height, width)).contiguous(memory_format=torch.channels_last)


def _max_pool_setup(ctx, inputs, output):
    x, _ = inputs
    ctx.save_for_backward(output[1])
    ctx.hw = tuple(x.shape[2:])
    ctx.mark_non_differentiable(output[1])


def _max_pool_backward(ctx, grad_out, _g_idx):
    (idx,) = ctx.saved_tensors
    return max_pool_backward_op(grad_out, idx, *ctx.hw), None


max_pool_op.register_autograd(_max_pool_backward, setup_context=_max_pool_setup)


__all__ = [
    "attention_backward_op", "attention_op", "bn_neuron_backward_op", "bn_neuron_eval_op", "bn_neuron_op",
    "max_pool_backward_op", "max_pool_op", "neuron_args", "neuron_backward_op", "neuron_op",
]
