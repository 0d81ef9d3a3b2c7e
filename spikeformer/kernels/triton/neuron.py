"""The multi-step neuron (LIF / IF / PLIF) in Triton: forward and BPTT backward, one custom op each.

One program owns a block of neurons and runs the whole time loop over ``[T, N]`` (the flat memory of ``[T, ...]``)
with the membrane in fp32 registers, whatever the input dtype (fp32, bf16, fp16). The charge equations use the
reference's order of operations (``neurons/functional.py``), an IEEE division by ``tau`` and no FMA contraction
(``enable_fp_fusion=False``), so spikes and final membrane are the reference's bits.

Forward keeps nothing: autograd saves the input ``x`` (as the compiled CPU kernel does), and the backward op first
recomputes the charged membrane ``H`` (same kernel, same bits) into a transient fp32 buffer, then runs the reverse
time loop. When nothing needs a gradient no ``H`` is ever written. Backward has the Sigmoid, ATan and Rectangle
surrogates built in; calls with another surrogate, another dtype or device go to the PyTorch kernel.

:func:`neuron` has the signature of the ``neuron`` operation (``spikeformer.kernels``); the ops are
``torch.ops.spikeformer.triton_neuron`` and ``triton_neuron_backward`` (``torch.library`` custom ops with autograd
and fake tensors registered, so ``torch.compile`` sees one opaque op).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ..params import NeuronParams, surrogate_kind
from ..torch import neuron as torch_neuron
from .common import BLOCK, FLOAT_DTYPES, NUM_WARPS, SURROGATES, dense, empty, like, round_to, runs_on

# the charge equation, a constexpr of the kernels (each in the reference's order of operations)
CHARGE_IF = 0            # v + x
CHARGE_DECAY_TAU = 1     # v + (x - (v - vr)) / tau
CHARGE_DECAY_K = 2       # v + (x - (v - vr)) * k
CHARGE_NO_DECAY_TAU = 3  # v - (v - vr) / tau + x
CHARGE_NO_DECAY_K = 4    # v - (v - vr) * k + x


@triton.jit
def _neuron_fwd(x_ptr, v0_ptr, k_ptr, a_ptr, b_ptr, s_ptr, v_ptr, h_ptr,
                T, N, C, vth, vr, vinit, tau,
                CHARGE: tl.constexpr, HARD: tl.constexpr, HAS_V0: tl.constexpr, AFFINE: tl.constexpr,
                STORE_S: tl.constexpr, STORE_V: tl.constexpr, STORE_H: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    else:
        v = tl.zeros([BLOCK], tl.float32) + vinit
    if CHARGE == 2 or CHARGE == 4:
        k = tl.load(k_ptr)
    if AFFINE:  # BatchNorm folded into the input: y = x * a[c] + b[c], channel innermost
        ch = offs % C
        a = tl.load(a_ptr + ch, mask=mask, other=0.0)
        b = tl.load(b_ptr + ch, mask=mask, other=0.0)
    xp = x_ptr + offs
    sp = s_ptr + offs
    hp = h_ptr + offs
    for _ in range(T):
        xin = tl.load(xp, mask=mask, other=0.0)
        if AFFINE:  # rounded to the input dtype, as an unfused BatchNorm output stored in that dtype is
            x = round_to(xin.to(tl.float32) * a + b, x_ptr.dtype.element_ty)
        else:
            x = xin.to(tl.float32)
        if CHARGE == 0:
            h = v + x
        elif CHARGE == 1:
            h = v + tl.math.div_rn(x - (v - vr), tau)
        elif CHARGE == 2:
            h = v + (x - (v - vr)) * k
        elif CHARGE == 3:
            h = (v - tl.math.div_rn(v - vr, tau)) + x
        else:
            h = (v - (v - vr) * k) + x
        spike = h >= vth
        if STORE_S:
            tl.store(sp, tl.where(spike, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if STORE_H:
            tl.store(hp, h, mask=mask)
        if HARD:
            v = tl.where(spike, vr, h)
        else:
            v = tl.where(spike, h - vth, h)
        xp += N
        sp += N
        hp += N
    if STORE_V:
        tl.store(v_ptr + offs, v, mask=mask)


@triton.jit
def _neuron_bwd(h_ptr, v0_ptr, k_ptr, gs_ptr, gvl_ptr, gx_ptr, gv0_ptr, gk_ptr,
                T, N, last, vth, vr, vinit, keep_c, gain_c, alpha,
                HARD: tl.constexpr, DETACH: tl.constexpr, DECAY: tl.constexpr, HAS_K: tl.constexpr,
                SURROGATE: tl.constexpr, HAS_GS: tl.constexpr, HAS_GVL: tl.constexpr, HAS_V0: tl.constexpr,
                STORE_GV0: tl.constexpr, STORE_GK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if HAS_K:
        k = tl.load(k_ptr)
        keep = 1.0 - k
        if DECAY:
            gain = k
        else:
            gain = 1.0
    else:
        keep = keep_c
        gain = gain_c
    if HAS_GVL:
        gv = tl.load(gvl_ptr + offs, mask=mask, other=0.0)
    else:
        gv = tl.zeros([BLOCK], tl.float32)
    if HAS_V0:
        v_first = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    else:
        v_first = tl.zeros([BLOCK], tl.float32) + vinit
    gk = tl.zeros([BLOCK], tl.float32)
    hp = h_ptr + last + offs
    gsp = gs_ptr + last + offs
    gxp = gx_ptr + last + offs
    for i in range(T):
        h = tl.load(hp, mask=mask, other=0.0)
        z = h - vth
        if SURROGATE == 1:  # sigmoid: alpha s (1 - s), s = sigmoid(alpha z)
            sig = tl.sigmoid(alpha * z)
            sg = alpha * sig * (1.0 - sig)
        elif SURROGATE == 2:  # atan: alpha/2 / (1 + (pi/2 alpha z)^2)
            u = 1.5707963267948966 * alpha * z
            sg = (alpha / 2.0) / (1.0 + u * u)
        else:  # rectangle: 1/alpha inside |z| < alpha/2
            sg = tl.where(tl.abs(z) < alpha / 2.0, 1.0 / alpha, 0.0)
        # dV[t]/dH[t]: 1 - S (hard, detach), 1 (soft, detach), 1 - S + (vr - H) sg (hard), 1 - V_th sg (soft)
        if HARD:
            below = tl.where(z < 0.0, 1.0, 0.0)
            if DETACH:
                dvdh = below
            else:
                dvdh = below + (vr - h) * sg
        else:
            if DETACH:
                dvdh = tl.zeros([BLOCK], tl.float32) + 1.0
            else:
                dvdh = 1.0 - vth * sg
        gh = gv * dvdh
        if HAS_GS:
            gh = tl.load(gsp, mask=mask, other=0.0).to(tl.float32) * sg + gh
        tl.store(gxp, round_to(gh * gain, gx_ptr.dtype.element_ty).to(gx_ptr.dtype.element_ty), mask=mask)
        if HAS_K:  # dH[t]/dk = (H[t] - V[t-1]) / k (decay_input), -(V[t-1] - vr) otherwise
            t = T - 1 - i
            hprev = tl.load(hp - N, mask=mask & (t > 0), other=0.0)
            if HARD:
                vprev = tl.where(hprev >= vth, vr, hprev)
            else:
                vprev = tl.where(hprev >= vth, hprev - vth, hprev)
            vprev = tl.where(t > 0, vprev, v_first)
            if DECAY:
                dhdk = (h - vprev) / k
            else:
                dhdk = vr - vprev
            gk += gh * dhdk
        gv = gh * keep
        hp -= N
        gsp -= N
        gxp -= N
    if STORE_GV0:
        tl.store(gv0_ptr + offs, gv, mask=mask)
    if STORE_GK:
        tl.store(gk_ptr + pid, tl.sum(tl.where(mask, gk, 0.0), axis=0))


class Cfg(NamedTuple):
    """The static settings of one call, as the custom ops take them (scalars only)."""

    v_threshold: float
    v_reset: float   # 0 with soft reset
    v_init: float    # the resting membrane when no v0 is given: v_reset rounded to the input dtype, as the reference
    hard: bool
    detach_reset: bool
    decay_input: bool
    leaky: bool
    tau: float       # a LIF's fixed tau; 0 for IF and PLIF
    surrogate: int   # SURROGATES code
    alpha: float


def make_cfg(p: NeuronParams, x_dtype: torch.dtype) -> Cfg:
    v_init = float(torch.tensor(p.v_reset if p.hard else 0.0, dtype=x_dtype))
    return Cfg(p.v_threshold, p.v_reset, v_init, p.hard, p.detach_reset, p.decay_input, p.leaky,
               float(p.tau) if p.tau is not None else 0.0, SURROGATES[p.surrogate], p.alpha)


def _charge_code(cfg: Cfg, has_k: bool) -> int:
    if not cfg.leaky:
        return CHARGE_IF
    if has_k:
        return CHARGE_DECAY_K if cfg.decay_input else CHARGE_NO_DECAY_K
    return CHARGE_DECAY_TAU if cfg.decay_input else CHARGE_NO_DECAY_TAU


def _grid(N: int):
    return (triton.cdiv(N, BLOCK),)


def launch_forward(x, k, v0, cfg: Cfg, a=None, b=None, C: int = 1, want_s=True, want_v=True, want_h=False):
    """Run the forward kernel on ``x`` ``[T, ...]`` (dense, see :func:`common.dense`); with ``a``, ``b`` the input
    is ``x * a[c] + b[c]`` per channel ``c`` (innermost, ``C`` of them). Returns ``(spikes, v_last, H)``, each a
    zero-size placeholder unless asked for."""
    T = x.shape[0]
    N = x.numel() // T
    f32 = torch.float32
    s = torch.empty_like(x) if want_s else empty(x.dtype, x.device)
    v = torch.empty_like(x[0], dtype=f32) if want_v else empty(f32, x.device)
    h = torch.empty_like(x, dtype=f32) if want_h else empty(f32, x.device)
    none = empty(f32, x.device)
    _neuron_fwd[_grid(N)](
        x, none if v0 is None else v0, none if k is None else k, none if a is None else a,
        none if b is None else b, s, v, h, T, N, C, cfg.v_threshold, cfg.v_reset, cfg.v_init, cfg.tau or 1.0,
        CHARGE=_charge_code(cfg, k is not None), HARD=cfg.hard, HAS_V0=v0 is not None, AFFINE=a is not None,
        STORE_S=want_s, STORE_V=want_v, STORE_H=want_h, BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False,
    )
    return s, v, h


def launch_backward(h, k, v0, gs, gvl, cfg: Cfg, gx_dtype, want_gk: bool, want_gv0: bool):
    """The reverse time loop over the charged membrane ``h`` (fp32, laid out as ``x``): ``(dL/dX in gx_dtype,
    dL/dk (0-dim fp32) or None, dL/dv0 (fp32, like ``h[0]``) or None)``."""
    T = h.shape[0]
    N = h.numel() // T
    f32 = torch.float32
    if cfg.leaky and k is None:
        rate = 1.0 / cfg.tau
        keep, gain = 1.0 - rate, (rate if cfg.decay_input else 1.0)
    else:
        keep, gain = 1.0, 1.0  # IF; a PLIF's are read from k in the kernel
    grid = _grid(N)
    gx = torch.empty_like(h, dtype=gx_dtype)
    gv0 = torch.empty_like(h[0]) if want_gv0 else empty(f32, h.device)
    gk = torch.empty(grid[0], dtype=f32, device=h.device) if want_gk else empty(f32, h.device)
    none = empty(f32, h.device)
    _neuron_bwd[grid](
        h, none if v0 is None else v0, none if k is None else k, none if gs is None else gs,
        none if gvl is None else gvl, gx, gv0, gk, T, N, (T - 1) * N, cfg.v_threshold, cfg.v_reset, cfg.v_init,
        keep, gain, cfg.alpha,
        HARD=cfg.hard, DETACH=cfg.detach_reset, DECAY=cfg.decay_input, HAS_K=k is not None,
        SURROGATE=cfg.surrogate, HAS_GS=gs is not None, HAS_GVL=gvl is not None, HAS_V0=v0 is not None,
        STORE_GV0=want_gv0, STORE_GK=want_gk, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    # per-program partial sums, added in a fixed order: the same gradient on every run
    return gx, (gk.sum() if want_gk else None), (gv0 if want_gv0 else None)


# ------------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("spikeformer::triton_neuron", mutates_args=())
def neuron_op(x: torch.Tensor, k: Optional[torch.Tensor], v0: Optional[torch.Tensor], v_threshold: float,
              v_reset: float, v_init: float, hard: bool, detach_reset: bool, decay_input: bool, leaky: bool,
              tau: float, surrogate: int, alpha: float, want_state: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spikes, final membrane)`` of dense ``x`` ``[T, ...]`` (``v0``, fp32 laid out as ``x[0]``, or ``None``:
    ``v_init``; ``k``: a PLIF's 0-dim fp32 rate); the membrane is a zero-size tensor unless ``want_state``."""
    cfg = Cfg(v_threshold, v_reset, v_init, hard, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    s, v, _ = launch_forward(x, k, v0, cfg, want_v=want_state)
    return s, v


@neuron_op.register_fake
def _neuron_fake(x, k, v0, v_threshold, v_reset, v_init, hard, detach_reset, decay_input, leaky, tau, surrogate,
                 alpha, want_state):
    v = torch.empty_like(x[0], dtype=torch.float32) if want_state else x.new_empty(0, dtype=torch.float32)
    return torch.empty_like(x), v


@torch.library.custom_op("spikeformer::triton_neuron_backward", mutates_args=())
def neuron_backward_op(x: torch.Tensor, k: Optional[torch.Tensor], v0: Optional[torch.Tensor],
                       grad_spikes: Optional[torch.Tensor], grad_v: Optional[torch.Tensor], v_threshold: float,
                       v_reset: float, v_init: float, hard: bool, detach_reset: bool, decay_input: bool, leaky: bool,
                       tau: float, surrogate: int, alpha: float, want_grad_k: bool,
                       want_grad_v0: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/dx, dL/dk, dL/dv0)`` of :func:`neuron_op` (the last two zero-size unless asked for)."""
    cfg = Cfg(v_threshold, v_reset, v_init, hard, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    _, _, h = launch_forward(x, k, v0, cfg, want_s=False, want_v=False, want_h=True)
    gs = None if grad_spikes is None else like(grad_spikes, x)
    gvl = None if grad_v is None else like(grad_v, x[0], torch.float32)
    gx, gk, gv0 = launch_backward(h, k, v0, gs, gvl, cfg, x.dtype, want_grad_k, want_grad_v0)
    nothing = x.new_empty(0, dtype=torch.float32)
    return gx, (nothing if gk is None else gk), (nothing if gv0 is None else gv0)


@neuron_backward_op.register_fake
def _neuron_backward_fake(x, k, v0, grad_spikes, grad_v, v_threshold, v_reset, v_init, hard, detach_reset,
                          decay_input, leaky, tau, surrogate, alpha, want_grad_k, want_grad_v0):
    gk = x.new_empty((), dtype=torch.float32) if want_grad_k else x.new_empty(0, dtype=torch.float32)
    gv0 = torch.empty_like(x[0], dtype=torch.float32) if want_grad_v0 else x.new_empty(0, dtype=torch.float32)
    return torch.empty_like(x), gk, gv0


def _setup_context(ctx, inputs, output):
    x, k, v0, *scalars = inputs
    ctx.save_for_backward(x, k, v0)
    ctx.cfg = Cfg(*scalars[:len(Cfg._fields)])


def _backward(ctx, grad_spikes, grad_v):
    x, k, v0 = ctx.saved_tensors
    want_k = k is not None and ctx.needs_input_grad[1]
    want_v0 = v0 is not None and ctx.needs_input_grad[2]
    if grad_v is not None and grad_v.numel() == 0:  # want_state=False: no membrane was returned
        grad_v = None
    gx, gk, gv0 = neuron_backward_op(x, k, v0, grad_spikes, grad_v, *ctx.cfg, want_k, want_v0)
    return (gx, gk if want_k else None, gv0 if want_v0 else None) + (None,) * (len(Cfg._fields) + 1)


neuron_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------- entry point
def supports(x_seq: torch.Tensor, k, v0: Optional[torch.Tensor], spec, surrogate) -> bool:
    """Whether the Triton kernels can run this call (else the PyTorch kernel runs it)."""
    return (
        runs_on(x_seq.device)
        and x_seq.dtype in FLOAT_DTYPES
        and x_seq.dim() >= 1
        and x_seq.numel() > 0
        and surrogate_kind(surrogate) in SURROGATES
        and (k is None or (k.numel() == 1 and k.device == x_seq.device and k.is_floating_point()))
        and (v0 is None or (v0.device == x_seq.device and v0.is_floating_point()))
    )


def neuron(x_seq, k, v0, spec, surrogate, want_state: bool = True):
    """The neuron operation (signature of ``kernels.torch.neuron.neuron``): the Triton kernels where they can run
    the call, the PyTorch kernel otherwise. ``want_state=False`` returns ``None`` for the final membrane."""
    if not supports(x_seq, k, v0, spec, surrogate):
        return torch_neuron.neuron(x_seq, k, v0, spec, surrogate, want_state)
    cfg = make_cfg(NeuronParams.from_spec(spec, surrogate), x_seq.dtype)
    x = dense(x_seq)
    # broadcasting, layout and dtype of v0 and k are done here with differentiable ops, so autograd sums and
    # casts their gradients back
    v0c = None if v0 is None else like(v0, x[0], torch.float32)
    kc = None if k is None else k.reshape(()).to(torch.float32)
    s, v = neuron_op(x, kc, v0c, *cfg, want_state)
    return s, (v if want_state else None)
