"""The pure-PyTorch multi-step neuron kernel (LIF / IF / PLIF): the fallback on every device and the reference the
compiled kernels are tested against (itself tested against the step-by-step loop of ``neurons/functional.py``).

It gives the same spikes and final membrane as that loop bit for bit, and gradients within fp32 rounding. What
makes it fast on CPU:

* forward writes each step's charge straight into the saved ``H`` buffer with in-place ops, resets with one
  ``where`` into one of two preallocated membrane buffers (no per-step allocation, which on CPU means fresh
  pages), and produces the spikes in one pass over all T after the loop;
* backward computes everything that does not depend on the recursion (surrogate gradient times ``dL/dS``, the
  reset masks) in whole-``[T, ...]`` passes; the reverse-time loop only does
  ``gH[t] = a[t] + keep * gH[t+1] * dV/dH[t]`` into the same buffer, which then becomes ``dL/dX``;
* saved state is ``H`` alone (``[T, ...]`` in the state dtype, fp32 under autocast); spikes, reset masks and
  membranes are recomputed from it;
* when nothing needs a gradient (inference, ``torch.no_grad()``), :func:`forward_no_grad` runs the same recursion
  without ``H`` and without an autograd node: two membrane buffers, each step's spikes written straight into the
  output and the reset done in place on the charge.
"""

from __future__ import annotations

import math

import torch

from ..params import SurrogateKind, is_pow2, surrogate_kind


def state_dtype(x: torch.Tensor) -> torch.dtype:
    # The membrane integrates in fp32 even when the synaptic input is bf16/fp16 (autocast): spikes stay exact
    # and thresholds are not blurred by low-precision accumulation.
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def initial_membrane(x_t: torch.Tensor, spec) -> torch.Tensor:
    """The resting membrane for inputs shaped like ``x_t``: ``V_reset``, or 0 with soft reset."""
    return torch.full_like(x_t, 0.0 if spec.v_reset is None else spec.v_reset)


def or_resting(v0, x_seq: torch.Tensor, spec) -> torch.Tensor:
    # v0=None is the resting membrane: the compiled kernel sets it itself, the PyTorch kernels need the tensor
    return initial_membrane(x_seq[0], spec).to(state_dtype(x_seq)) if v0 is None else v0


def _surrogate_grad_(d: torch.Tensor, sur) -> torch.Tensor:
    """``sur.grad(d)``, computed in place in ``d`` for the built-in surrogates (same operation order, same bits)."""
    kind = surrogate_kind(sur)
    if kind is SurrogateKind.SIGMOID:
        a = sur.alpha
        s = d.mul_(a).sigmoid_()
        one_minus = torch.sub(1.0, s)
        return s.mul_(a).mul_(one_minus)
    if kind is SurrogateKind.ATAN:
        a = sur.alpha
        return d.mul_(math.pi / 2.0 * a).pow_(2).add_(1.0).reciprocal_().mul_(a / 2.0)
    return sur.grad(d)


def _run(x_seq, kk, v0, spec, h_seq=None):
    """The forward recursion. With ``h_seq`` (a ``[T, ...]`` buffer in the state dtype) every step's charge is
    written into it for backward and the spikes are produced in one pass at the end; without it (no autograd)
    only two membrane buffers are allocated, each step's spikes are written straight into the output, and the
    reset happens in place on the charge. Both give the same bits as ``functional._MultiStepNeuron``.
    Returns ``(spikes, final membrane)``; the membrane may alias an internal buffer."""
    sdt = state_dtype(x_seq)
    T = x_seq.shape[0]
    vth = spec.v_threshold
    vr = 0.0 if spec.v_reset is None else spec.v_reset
    # x / tau == x * (1/tau) exactly when tau is a power of two, and then v + (x - v) / tau is one fused
    # add-with-alpha (the product is exact, so an FMA rounds the same as the separate ops)
    fused_rate = spec.leaky and kk is None and is_pow2(spec.tau) and spec.decay_input and vr == 0.0
    step_shape = x_seq.shape[1:]
    bufs = (torch.empty(step_shape, dtype=sdt, device=x_seq.device),
            torch.empty(step_shape, dtype=sdt, device=x_seq.device))
    mask = torch.empty(step_shape, dtype=torch.bool, device=x_seq.device)
    spikes = None if h_seq is not None else torch.empty_like(x_seq, memory_format=torch.contiguous_format)
    vr_t = torch.tensor(vr, dtype=sdt, device=x_seq.device)
    v = v0.to(sdt)
    for t in range(T):
        x = x_seq[t]
        h = h_seq[t] if h_seq is not None else bufs[t % 2]
        # charge, written into h; each line is one op of functional._charge, in the same order
        if not spec.leaky:
            torch.add(v, x, out=h)
        elif fused_rate:
            torch.sub(x, v, out=h)
            h.mul_(1.0 / spec.tau).add_(v)
        elif spec.decay_input:
            torch.sub(x, v if vr == 0.0 else v - vr, out=h)
            h.div_(spec.tau) if kk is None else h.mul_(kk)
            h.add_(v)
        else:
            torch.sub(v, vr, out=h) if vr != 0.0 else h.copy_(v)
            h.div_(spec.tau) if kk is None else h.mul_(kk)
            torch.sub(v, h, out=h)
            h.add_(x)
        # fire and reset: V = H where H < V_th, else vr (hard) or H - V_th (soft); equal to H(1-S) + vr S
        if h_seq is None:
            torch.ge(h, vth, out=mask)
            spikes[t].copy_(mask)
            if spec.v_reset is None:
                torch.where(mask, h - vth, h, out=h)
            else:
                h.masked_fill_(mask, vr)
            v = h
        else:
            torch.lt(h, vth, out=mask)
            nv = bufs[t % 2]
            if spec.v_reset is None:
                torch.sub(h, vth, out=nv)
                torch.where(mask, h, nv, out=nv)
            else:
                torch.where(mask, h, vr_t, out=nv)
            v = nv
    if h_seq is not None:
        spikes = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)
        torch.ge(h_seq, vth, out=spikes)  # bool -> x dtype in the same pass
    return spikes, v


def forward_no_grad(x_seq, k, v0, spec, want_state: bool = True):
    """The forward when nothing needs a gradient: no saved ``H``, no autograd node. ``v0=None``: the resting
    membrane. The final membrane is always returned (``want_state`` is accepted for a common signature)."""
    v0 = or_resting(v0, x_seq, spec)
    kk = None if k is None else k.detach().to(state_dtype(x_seq))
    spikes, v = _run(x_seq, kk, v0.detach(), spec)
    return spikes, v.clone() if v is v0 else v


class TorchMultiStep(torch.autograd.Function):
    """The pure-PyTorch fused kernel (any device)."""

    @staticmethod
    def forward(ctx, x_seq, k, v0, spec, surrogate):
        sdt = state_dtype(x_seq)
        kk = None if k is None else k.to(sdt)
        h_seq = torch.empty(x_seq.shape, dtype=sdt, device=x_seq.device)
        spikes, v = _run(x_seq, kk, v0, spec, h_seq)
        ctx.save_for_backward(h_seq, kk if kk is not None else h_seq.new_empty(0), v0)
        ctx.spec, ctx.surrogate, ctx.has_k, ctx.x_dtype = spec, surrogate, k is not None, x_seq.dtype
        return spikes, v.clone()  # the final membrane must not alias the ping-pong buffers

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        h_seq, kk, v0 = ctx.saved_tensors
        spec, sur, has_k = ctx.spec, ctx.surrogate, ctx.has_k
        T, sdt = h_seq.shape[0], h_seq.dtype
        vth = spec.v_threshold
        vr = 0.0 if spec.v_reset is None else spec.v_reset
        if spec.leaky:
            k = kk if has_k else 1.0 / spec.tau
            keep = 1.0 - k  # dH[t+1]/dV[t]
            in_gain = k if spec.decay_input else 1.0  # dH[t]/dX[t]
        else:
            keep, in_gain = 1.0, 1.0
        gs = torch.zeros_like(h_seq) if grad_spikes is None else grad_spikes.to(sdt)

        # a[t] = dL/dS[t] * sg(H[t] - V_th) for all T at once, in the buffer that becomes dL/dH, then dL/dX.
        # For the sigmoid surrogate, sg = alpha s (1 - s): one sigmoid_backward pass gives a / alpha, and when
        # dV/dH does not involve sg (detach_reset) the whole recursion runs in units of 1/alpha and alpha is
        # folded into the final input gain.
        z = torch.sub(h_seq, vth)
        scale, sg = 1.0, None
        if surrogate_kind(sur) is SurrogateKind.SIGMOID and spec.detach_reset:
            s = z.mul_(sur.alpha).sigmoid_()
            g = torch.ops.aten.sigmoid_backward(gs, s)
            del s, z
            scale = sur.alpha
        else:
            sg = _surrogate_grad_(z, sur)
            g = torch.mul(gs, sg)
            if spec.detach_reset:
                sg = None
        del gs

        # dV[t]/dH[t]: 1 - S (hard, detach), 1 (soft, detach), 1 - S + (vr - H) sg (hard), 1 - V_th sg (soft)
        below = torch.lt(h_seq, vth) if spec.v_reset is not None else None

        def dv_dh(t):
            if spec.detach_reset:
                return below[t] if below is not None else None
            if spec.v_reset is None:
                return torch.mul(sg[t], -vth).add_(1.0)
            return below[t].to(sdt).add_(torch.sub(vr, h_seq[t]).mul_(sg[t]))

        # reverse time: dL/dH[t] = a[t] + (dL/dH[t+1] * keep) * dV/dH[t]
        gv = None
        if grad_v_last is not None:
            gv = grad_v_last.to(sdt, copy=True)
            if scale != 1.0:
                gv.div_(scale)
        buf = torch.empty_like(h_seq[0])
        for t in range(T - 1, -1, -1):
            if gv is not None:
                m = dv_dh(t)
                if m is not None:
                    torch.mul(gv, m, out=buf)
                    gv = buf
                g[t].add_(gv)
            gv = torch.mul(g[t], keep, out=buf)
        grad_v0 = gv.mul(scale).to(v0.dtype) if ctx.needs_input_grad[2] else None

        grad_k = None
        if has_k:
            # dH[t]/dk = X[t] - (V[t-1] - vr) = (H[t] - V[t-1]) / k (decay_input), -(V[t-1] - vr) otherwise
            v_prev = torch.empty_like(h_seq)
            v_prev[0] = v0.to(sdt)
            if T > 1:
                hp = h_seq[:-1]
                if spec.v_reset is None:
                    torch.where(hp >= vth, hp - vth, hp, out=v_prev[1:])
                else:
                    v_prev[1:].copy_(hp).masked_fill_(hp >= vth, vr)
            if spec.decay_input:
                dh_dk = torch.sub(h_seq, v_prev).div_(kk)
            else:
                dh_dk = torch.sub(v_prev, vr).neg_()
            grad_k = (g * dh_dk).sum().mul_(scale).to(kk.dtype)

        gain = in_gain * scale
        if not (isinstance(gain, float) and gain == 1.0):
            g.mul_(gain)
        return g.to(ctx.x_dtype), grad_k, grad_v0, None, None


def needs_grad(x_seq: torch.Tensor, k, v0) -> bool:
    """Whether a call builds an autograd graph (else a kernel runs its forward alone)."""
    return torch.is_grad_enabled() and (
        x_seq.requires_grad or (v0 is not None and v0.requires_grad) or (k is not None and k.requires_grad)
    )


def neuron(x_seq, k, v0, spec, surrogate, want_state: bool = True):
    """The neuron operation: ``(spikes, final membrane)`` of the layer ``spec`` over ``x_seq`` ``[T, ...]`` from
    ``v0`` (``None``: the resting membrane), with the rate tensor ``k`` of a PLIF (else ``None``)."""
    if needs_grad(x_seq, k, v0):
        return TorchMultiStep.apply(x_seq, k, or_resting(v0, x_seq, spec), spec, surrogate)
    return forward_no_grad(x_seq, k, v0, spec, want_state)
