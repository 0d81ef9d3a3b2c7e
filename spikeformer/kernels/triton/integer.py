"""The integer-valued neuron (I-LIF / MultiSpike / NI-LIF counts, ``spikeformer/neurons/integer.py``) in Triton.

``counts(x)`` of :class:`spikeformer.neurons.integer.IntegerLIF` over ``[T, N]``: ``H[t] = V[t-1] * decay + X[t]``
(``H = X`` when stateless), ``C[t] = round(clip(H[t] / V_th, 0, D))`` (half to even, as ``torch.round``),
``V[t] = H[t] - C[t] V_th``. The module computes in the input's dtype, so each operation's result is rounded to
that dtype here too: the counts are the module's bits for fp32, bf16 and fp16. Backward is the official
straight-through gradient (inside ``[0, D]``, the reset detached); like the neuron kernel it recomputes ``H`` from
the saved input.

This operation has no name in the kernel dispatch yet: :func:`integer_counts` is called directly.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import BLOCK, FLOAT_DTYPES, NUM_WARPS, dense, empty, round_to, runs_on

@triton.jit
def _int_fwd(x_ptr, c_ptr, h_ptr, T, N, D, decay, vth,
             STATEFUL: tl.constexpr, DIVIDE: tl.constexpr, STORE_C: tl.constexpr, STORE_H: tl.constexpr,
             BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    dt = x_ptr.dtype.element_ty
    v = tl.zeros([BLOCK], tl.float32)
    xp = x_ptr + offs
    cp = c_ptr + offs
    hp = h_ptr + offs
    for _ in range(T):
        x = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        if STATEFUL:
            h = round_to(round_to(v * decay, dt) + x, dt)
        else:
            h = x
        if DIVIDE:
            u = round_to(tl.math.div_rn(h, vth), dt)
        else:
            u = h
        cl = tl.minimum(tl.maximum(u, 0.0), D * 1.0)
        c = (cl + 8388608.0) - 8388608.0  # 0 <= cl < 2**23: rounds half to even, as torch.round
        if STORE_C:
            tl.store(cp, c.to(dt), mask=mask)
        if STORE_H:
            tl.store(hp, h, mask=mask)
        if STATEFUL:
            v = round_to(h - round_to(c * vth, dt), dt)
        xp += N
        cp += N
        hp += N


@triton.jit
def _int_bwd(h_ptr, gc_ptr, gx_ptr, T, N, last, D, decay, vth,
             STATEFUL: tl.constexpr, DIVIDE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    dt = gx_ptr.dtype.element_ty
    gv = tl.zeros([BLOCK], tl.float32)
    hp = h_ptr + last + offs
    gcp = gc_ptr + last + offs
    gxp = gx_ptr + last + offs
    for _ in range(T):
        h = tl.load(hp, mask=mask, other=0.0)
        if DIVIDE:
            u = round_to(tl.math.div_rn(h, vth), dt)
        else:
            u = h
        inside = (u >= 0.0) & (u <= D * 1.0)
        gh = tl.where(inside, tl.load(gcp, mask=mask, other=0.0).to(tl.float32), 0.0)
        if DIVIDE:
            gh = gh / vth
        gh = gh + gv
        tl.store(gxp, round_to(gh, dt).to(dt), mask=mask)
        if STATEFUL:
            gv = gh * decay
        hp -= N
        gcp -= N
        gxp -= N


def _launch_forward(x, D, decay, stateful, vth, want_c=True, want_h=False):
    T = x.shape[0]
    N = x.numel() // T
    c = torch.empty_like(x) if want_c else empty(x.dtype, x.device)
    h = torch.empty_like(x, dtype=torch.float32) if want_h else empty(torch.float32, x.device)
    _int_fwd[(triton.cdiv(N, BLOCK),)](x, c, h, T, N, D, decay, vth, STATEFUL=stateful, DIVIDE=vth != 1.0,
                                       STORE_C=want_c, STORE_H=want_h, BLOCK=BLOCK, num_warps=NUM_WARPS,
                                       enable_fp_fusion=False)
    return c, h


@torch.library.custom_op("spikeformer::triton_integer_lif", mutates_args=())
def integer_op(x: torch.Tensor, D: int, decay: float, stateful: bool, v_threshold: float) -> torch.Tensor:
    """Integer spike counts of dense ``x`` ``[T, ...]``, in ``x``'s dtype."""
    c, _ = _launch_forward(x, D, decay, stateful, v_threshold)
    return c


@integer_op.register_fake
def _integer_fake(x, D, decay, stateful, v_threshold):
    return torch.empty_like(x)


@torch.library.custom_op("spikeformer::triton_integer_lif_backward", mutates_args=())
def integer_backward_op(x: torch.Tensor, grad_counts: torch.Tensor, D: int, decay: float, stateful: bool,
                        v_threshold: float) -> torch.Tensor:
    """``dL/dx`` of :func:`integer_op` (straight-through inside ``[0, D]``)."""
    _, h = _launch_forward(x, D, decay, stateful, v_threshold, want_c=False, want_h=True)
    T = x.shape[0]
    N = x.numel() // T
    gc = grad_counts if grad_counts.stride() == x.stride() else torch.empty_like(x, dtype=grad_counts.dtype).copy_(
        grad_counts)
    gx = torch.empty_like(x)
    _int_bwd[(triton.cdiv(N, BLOCK),)](h, gc, gx, T, N, (T - 1) * N, D, decay, v_threshold, STATEFUL=stateful,
                                       DIVIDE=v_threshold != 1.0, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return gx


@integer_backward_op.register_fake
def _integer_backward_fake(x, grad_counts, D, decay, stateful, v_threshold):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, *params = inputs
    ctx.save_for_backward(x)
    ctx.params = params


def _backward(ctx, grad_counts):
    (x,) = ctx.saved_tensors
    return (integer_backward_op(x, grad_counts, *ctx.params),) + (None,) * len(ctx.params)


integer_op.register_autograd(_backward, setup_context=_setup_context)


def supports(x_seq: torch.Tensor) -> bool:
    return runs_on(x_seq.device) and x_seq.dtype in FLOAT_DTYPES and x_seq.dim() >= 1 and x_seq.numel() > 0


def integer_counts(x_seq: torch.Tensor, D: int, decay: Optional[float], v_threshold: float = 1.0) -> torch.Tensor:
    """``IntegerLIF(D, decay, v_threshold).counts(x_seq)``: the Triton kernel where it can run the call, the
    module's PyTorch loop otherwise."""
    if not supports(x_seq):
        from ...neurons.integer import IntegerLIF  # the module lives above the kernels

        return IntegerLIF(D=D, decay=decay, v_threshold=v_threshold).counts(x_seq)
    stateful = decay is not None
    return integer_op(dense(x_seq), int(D), float(decay) if stateful else 0.0, stateful, float(v_threshold))
