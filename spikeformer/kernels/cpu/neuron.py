"""Binding of the compiled multi-step neuron kernel (``neuron.cpp``): LIF / IF / PLIF forward and BPTT backward.

What it runs: hard or soft reset, any threshold, decay_input either way, on dense float32 or bfloat16 ``[T, ...]``
input (row-major, or channels-last frames ``[T, B, C, H, W]``), with the Sigmoid or ATan surrogate in backward.
The forward gives the same bits as the PyTorch kernel (``kernels/torch/neuron.py``); gradients agree within fp32
rounding. Calls it cannot run (another device, dtype or surrogate) go to the PyTorch kernel.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..params import NeuronParams, ResetMode, SurrogateKind, surrogate_kind
from ..torch import neuron as torch_neuron
from . import bf16, build, ops
from .build import is_bf16, ptr, threads


class Params(ctypes.Structure):
    """Mirror of ``SfParams`` in ``neuron.h``."""

    _fields_ = [
        ("T", ctypes.c_int64), ("N", ctypes.c_int64),
        ("charge", ctypes.c_int32), ("hard", ctypes.c_int32), ("detach", ctypes.c_int32),
        ("surrogate", ctypes.c_int32), ("nthreads", ctypes.c_int32), ("vr_zero", ctypes.c_int32),
        ("vth", ctypes.c_float), ("vr", ctypes.c_float), ("tau", ctypes.c_float), ("rate", ctypes.c_float),
        ("alpha", ctypes.c_float), ("keep", ctypes.c_float), ("in_gain", ctypes.c_float),
        ("vinit", ctypes.c_float),
    ]


# SfParams.charge: the charge equation, each with PyTorch's order of operations (see charge() in neuron.h)
CHARGE_IF = 0              # v + x
CHARGE_EXACT_RATE = 1      # (x - v) * (1 / tau) + v, tau a power of two, v_reset 0
CHARGE_DECAY_TAU = 2       # (x - (v - vr)) / tau + v
CHARGE_DECAY_K = 3         # (x - (v - vr)) * k + v
CHARGE_NO_DECAY_TAU = 4    # v - (v - vr) / tau + x
CHARGE_NO_DECAY_K = 5      # v - (v - vr) * k + x
# SfParams.surrogate: the gradients compiled in
SURROGATES = {SurrogateKind.SIGMOID: 1, SurrogateKind.ATAN: 2}

_c = ctypes
build.declare(
    sf_forward=(None, [_c.POINTER(Params), _c.c_void_p, _c.c_int, _c.c_void_p, _c.c_void_p, _c.c_void_p]),
    sf_backward=(_c.c_double, [_c.POINTER(Params), _c.c_void_p, _c.c_int, _c.c_void_p, _c.c_void_p, _c.c_int,
                               _c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_int]),
)


def supports(x_seq: torch.Tensor, k, v0: Optional[torch.Tensor], spec, surrogate) -> bool:
    """Whether the compiled kernel can run this call (else the caller uses the PyTorch kernel). ``v0=None``: the
    resting membrane, which the kernel sets itself."""
    return (
        x_seq.device.type == "cpu"
        and x_seq.dtype in (torch.float32, torch.bfloat16)
        and x_seq.dim() >= 1
        and x_seq.numel() > 0
        and surrogate_kind(surrogate) in SURROGATES
        and (k is None or (k.numel() == 1 and k.dtype == torch.float32))
        and (v0 is None or (v0.dtype == torch.float32 and v0.device.type == "cpu"))
        and build.available()
    )


def params(x_seq: torch.Tensor, k: Optional[torch.Tensor], p: NeuronParams) -> Params:
    """The C structure of one call on ``x_seq`` ``[T, ...]`` (``k``: a PLIF's rate tensor, else ``None``)."""
    if p.surrogate not in SURROGATES:
        raise ValueError(f"the compiled neuron kernel has no {p.surrogate.value} surrogate gradient")
    T = x_seq.shape[0]
    N = x_seq.numel() // T
    vr = p.v_reset
    kf = None if k is None else float(k.detach().reshape(()).item())
    if not p.leaky:
        charge, tau, rate = CHARGE_IF, 1.0, 1.0
    elif k is None:
        tau, rate = float(p.tau), 1.0 / float(p.tau)
        if p.exact_rate:
            charge = CHARGE_EXACT_RATE
        else:
            charge = CHARGE_DECAY_TAU if p.decay_input else CHARGE_NO_DECAY_TAU
    else:
        charge, tau, rate = (CHARGE_DECAY_K if p.decay_input else CHARGE_NO_DECAY_K), 1.0, kf
    if p.leaky:
        kk = rate if k is None else kf
        keep, gain = 1.0 - kk, (kk if p.decay_input else 1.0)
    else:
        keep, gain = 1.0, 1.0
    hard = p.reset is ResetMode.HARD
    return Params(
        T=T, N=N, charge=charge, hard=int(hard), detach=int(p.detach_reset), surrogate=SURROGATES[p.surrogate],
        nthreads=threads(), vr_zero=int(vr == 0.0), vth=p.v_threshold, vr=vr, tau=tau, rate=rate, alpha=p.alpha,
        keep=keep, in_gain=gain, vinit=vr if hard else 0.0,
    )


def _params(x_seq: torch.Tensor, k: Optional[torch.Tensor], spec, surrogate) -> Params:
    return params(x_seq, k, NeuronParams.from_spec(spec, surrogate))


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when every step ``x[t]`` is one dense block laid out alike (row-major, or channels-last frames
    ``[T, B, C, H, W]`` as the fast convolution stem produces), else a contiguous copy. The kernel works on the
    flat memory, so outputs made with ``torch.empty_like`` (same strides) line up element for element."""
    if x.is_contiguous():
        return x
    if x.dim() == 5 and x[0].is_contiguous(memory_format=torch.channels_last):
        if x.stride(0) == x[0].numel():
            return x
        if x.stride(0) == 0 and x.shape[0] > 1:
            # channels-last frames repeated over time (an expanded static batch): copied as channels-last frames
            out = torch.empty((x.shape[0] * x.shape[1], *x.shape[2:]), dtype=x.dtype,
                              memory_format=torch.channels_last)
            return out.unflatten(0, x.shape[:2]).copy_(x)
    return x.contiguous()


def _like(t: torch.Tensor, ref: torch.Tensor, dtype=None) -> torch.Tensor:
    """``t`` in ``ref``'s memory layout (and ``dtype``), copying only when needed."""
    dtype = dtype or t.dtype
    if t.dtype == dtype and t.shape == ref.shape and t.stride() == ref.stride():
        return t
    out = torch.empty_like(ref, dtype=dtype)
    out.copy_(t)
    return out


def _v0(v0: Optional[torch.Tensor], x_seq: torch.Tensor) -> Optional[torch.Tensor]:
    # None: every neuron starts at the resting membrane (Params.vinit), set inside the kernel
    return None if v0 is None else _like(v0.detach().expand(x_seq.shape[1:]), x_seq[0], torch.float32)


def _forward(x: torch.Tensor, v0c: Optional[torch.Tensor], p: Params, want_state: bool = True):
    s = torch.empty_like(x)
    v_last = torch.empty_like(x[0], dtype=torch.float32) if want_state else None
    build.library().sf_forward(ctypes.byref(p), ptr(x), is_bf16(x), ptr(s), ptr(v0c), ptr(v_last))
    return s, v_last


def forward_no_grad(x_seq, k, v0, spec, surrogate, want_state: bool = True):
    """Spikes and final membrane (``None`` unless ``want_state``) without saving anything for backward."""
    if torch.compiler.is_compiling():
        return compiled(x_seq.detach(), None if k is None else k.detach(), None if v0 is None else v0.detach(), spec,
                        surrogate, want_state)
    x = _dense(x_seq.detach())
    return _forward(x, _v0(v0, x), _params(x, k, spec, surrogate), want_state)


def compiled(x_seq, k, v0, spec, surrogate, want_state: bool = True):
    """The neuron as the custom operator ``spikeformer::neuron`` (``ops.py``): what ``torch.compile`` traces."""
    s, v_last = ops.neuron_op(_dense(x_seq), k, v0, *ops.neuron_args(NeuronParams.from_spec(spec, surrogate)),
                              want_state)
    return s, v_last if want_state else None


class NativeMultiStep:
    """``NativeMultiStep.apply(x_seq, k, v0, spec, surrogate, want_state=True)``: the compiled kernel with autograd,
    :class:`MultiStepFunction` in eager mode and the custom operator under ``torch.compile``."""

    @staticmethod
    def apply(x_seq, k, v0, spec, surrogate, want_state=True):
        if torch.compiler.is_compiling():
            return compiled(x_seq, k, v0, spec, surrogate, want_state)
        return MultiStepFunction.apply(x_seq, k, v0, spec, surrogate, want_state)


class MultiStepFunction(torch.autograd.Function):
    """The compiled kernel with autograd. It saves the input ``x`` (and ``v0``), not the membrane: backward
    recomputes ``H`` block by block in cache (bit-identical, a small fraction of the backward's time), so a layer
    keeps ``[T, ...]`` in the input's dtype (2 bytes per site under bf16 autocast instead of 4 for an fp32 ``H``)
    and, since the input is usually a fresh BatchNorm output that nothing else keeps, nothing more. With ``v0=None``
    (the resting membrane) no ``[...]`` state is made, read or kept; with ``want_state=False`` the final membrane is
    not written and ``None`` is returned in its place."""

    @staticmethod
    def forward(ctx, x_seq, k, v0, spec, surrogate, want_state=True):
        x = _dense(x_seq)
        p = _params(x, k, spec, surrogate)
        v0c = _v0(v0, x)
        s, v_last = _forward(x, v0c, p, want_state)
        ctx.save_for_backward(x, v0c)
        ctx.params, ctx.k_shape = p, None if k is None else k.shape
        ctx.v0_shape, ctx.v0_dtype = (None, None) if v0 is None else (v0.shape, v0.dtype)
        return s, v_last

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, grad_spikes, grad_v_last):
        x, v0c = ctx.saved_tensors
        p = ctx.params
        p.nthreads = threads()
        if grad_spikes is None:  # only the final membrane is used
            gs = torch.zeros_like(x, dtype=torch.float32)
        else:
            gs = _like(grad_spikes, x, grad_spikes.dtype if grad_spikes.dtype in (torch.float32, torch.bfloat16)
                       else torch.float32)
        gvl = None if grad_v_last is None else _like(grad_v_last, x[0], torch.float32)
        gx = torch.empty_like(x)
        want_v0 = ctx.needs_input_grad[2] and v0c is not None
        want_k = ctx.k_shape is not None and ctx.needs_input_grad[1]
        gv0 = torch.empty_like(x[0], dtype=torch.float32) if want_v0 else None
        total = build.library().sf_backward(
            ctypes.byref(p), ptr(x), is_bf16(x), ptr(v0c), ptr(gs), is_bf16(gs), ptr(gvl), ptr(gx), ptr(gv0),
            int(want_k),
        )
        grad_k = torch.tensor(total, dtype=torch.float32).reshape(ctx.k_shape) if want_k else None
        if gv0 is not None:
            gv0 = gv0.sum_to_size(ctx.v0_shape).to(ctx.v0_dtype)
        return gx, grad_k, gv0, None, None, None


def neuron(x_seq, k, v0, spec, surrogate, want_state: bool = True):
    """The neuron operation on CPU: the compiled kernel where it can run the call (with autograd when something
    needs a gradient, else its forward alone), the PyTorch kernel otherwise."""
    if not supports(x_seq, k, v0, spec, surrogate):
        return torch_neuron.neuron(x_seq, k, v0, spec, surrogate, want_state)
    if torch_neuron.needs_grad(x_seq, k, v0):
        return NativeMultiStep.apply(x_seq, k, v0, spec, surrogate, want_state)
    return forward_no_grad(x_seq, k, v0, spec, surrogate, want_state)

