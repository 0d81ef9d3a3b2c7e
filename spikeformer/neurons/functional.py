"""Multi-step integrate-and-fire dynamics over ``[T, ...]`` with a hand-written backward.

One autograd function serves LIF, IF and parametric LIF. Forward runs the whole time loop and saves only the
charged membrane ``H[t]`` (one ``[T, ...]`` tensor per neuron layer); spikes and the post-reset membrane are
recomputed from it in backward, which runs BPTT through the membrane in reverse time.

Dynamics (SpikingJelly's, so that spikes and gradients match it exactly):

* charge  ``H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) * k``   (LIF, decay_input=True, ``k = 1/tau``)
  ``H[t] = V[t-1] - (V[t-1] - V_reset) * k + X[t]``             (LIF, decay_input=False)
  ``H[t] = V[t-1] + X[t]``                                      (IF)
* fire    ``S[t] = Heaviside(H[t] - V_th)``, Heaviside(0) = 1
* reset   ``V[t] = H[t] (1 - S[t]) + V_reset S[t]`` (hard) or ``V[t] = H[t] - V_th S[t]`` (soft, V_reset=None)

With ``detach_reset`` the spike inside the reset carries no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import _kernels
from .surrogate import Surrogate


@dataclass(frozen=True)
class NeuronSpec:
    """The static settings of a neuron layer (everything but the learnable PLIF rate)."""

    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = False
    decay_input: bool = True
    leaky: bool = True  # False = IF
    tau: Optional[float] = 2.0  # fixed time constant (LIF); None when the rate k is a tensor (PLIF)


def _charge(x, v, spec: NeuronSpec, k):
    if not spec.leaky:
        return v + x
    vr = 0.0 if spec.v_reset is None else spec.v_reset
    if k is None:  # fixed tau: divide, as SpikingJelly does, to agree to the last bit
        if spec.decay_input:
            return v + (x - (v - vr)) / spec.tau
        return v - (v - vr) / spec.tau + x
    if spec.decay_input:
        return v + (x - (v - vr)) * k
    return v - (v - vr) * k + x


def _reset(h, s, spec: NeuronSpec):
    if spec.v_reset is None:
        return h - spec.v_threshold * s
    return h * (1.0 - s) + spec.v_reset * s


initial_membrane = _kernels.initial_membrane
_state_dtype = _kernels.state_dtype


class _MultiStepNeuron(torch.autograd.Function):
    """The reference kernel: the equations above step by step, one op each. The fused kernels in
    ``_kernels.py`` are tested against it (``multi_step(..., impl="reference")``)."""

    @staticmethod
    def forward(ctx, x_seq, k, v0, spec: NeuronSpec, surrogate: Surrogate):
        sdt = _state_dtype(x_seq)
        v = v0.to(sdt)
        h_seq = torch.empty(x_seq.shape, dtype=sdt, device=x_seq.device)
        spikes = torch.empty_like(x_seq)
        kk = None if k is None else k.to(sdt)
        for t in range(x_seq.shape[0]):
            h = _charge(x_seq[t].to(sdt), v, spec, kk)
            s = (h >= spec.v_threshold).to(sdt)
            h_seq[t] = h
            spikes[t] = s
            v = _reset(h, s, spec)
        ctx.save_for_backward(h_seq, kk if kk is not None else h_seq.new_empty(0), v0)
        ctx.spec, ctx.surrogate, ctx.has_k = spec, surrogate, k is not None
        ctx.x_dtype = x_seq.dtype
        return spikes, v

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        h_seq, kk, v0 = ctx.saved_tensors
        spec, sur = ctx.spec, ctx.surrogate
        has_k = ctx.has_k
        T = h_seq.shape[0]
        sdt = h_seq.dtype
        if spec.leaky:
            k = kk if has_k else 1.0 / spec.tau
            keep = 1.0 - k  # dH[t+1]/dV[t]
            in_gain = k if spec.decay_input else 1.0  # dH[t]/dX[t]
        else:
            keep, in_gain = 1.0, 1.0
        vr = 0.0 if spec.v_reset is None else spec.v_reset
        grad_x = torch.empty(h_seq.shape, dtype=ctx.x_dtype, device=h_seq.device)
        gv = grad_v_last.to(sdt) if grad_v_last is not None else torch.zeros_like(h_seq[0])
        gk = torch.zeros((), dtype=sdt, device=h_seq.device) if has_k else None
        for t in range(T - 1, -1, -1):
            h = h_seq[t]
            d = h - spec.v_threshold
            sg = sur.grad(d)
            s = (d >= 0).to(sdt)
            if spec.v_reset is None:
                dv_dh = torch.ones_like(h) if spec.detach_reset else 1.0 - spec.v_threshold * sg
            else:
                dv_dh = 1.0 - s if spec.detach_reset else (1.0 - s) + (vr - h) * sg
            gh = grad_spikes[t].to(sdt) * sg + gv * dv_dh
            grad_x[t] = gh * in_gain
            if has_k:
                v_prev = v0.to(sdt) if t == 0 else _reset(h_seq[t - 1], (h_seq[t - 1] >= spec.v_threshold).to(sdt), spec)
                if spec.decay_input:
                    dh_dk = (h - v_prev) / k  # = X[t] - (V[t-1] - V_reset)
                else:
                    dh_dk = -(v_prev - vr)
                gk = gk + (gh * dh_dk).sum()
            gv = gh * keep
        grad_k = gk.to(kk.dtype) if has_k else None
        return grad_x, grad_k, gv.to(v0.dtype) if ctx.needs_input_grad[2] else None, None, None


def multi_step(
    x_seq: torch.Tensor,
    spec: NeuronSpec,
    surrogate: Surrogate,
    k: Optional[torch.Tensor] = None,
    v0: Optional[torch.Tensor] = None,
    impl: Optional[str] = None,
    want_state: bool = True,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run a neuron layer over ``x_seq`` ``[T, ...]``; returns ``(spikes [T, ...], final membrane [...])``.

    ``k`` is the learnable decay rate ``1/tau`` of a parametric LIF (a 0-dim tensor), ``None`` otherwise.
    ``v0`` is the initial membrane (default: ``V_reset``, or 0 for soft reset).
    ``impl``: ``None`` picks the kernel for the device (``_kernels.select_kernel``: the compiled CPU kernel when it
    can run the call, else the pure-PyTorch fused kernel; same spikes, gradients within fp32 rounding);
    ``"torch"`` forces the pure-PyTorch fused kernel, ``"native"`` the compiled one (an error if it cannot run the
    call), ``"reference"`` the plain step-by-step loop. When nothing needs a gradient (``torch.no_grad()``,
    inference) the fused kernels run their forward alone: no ``[T, ...]`` membrane is kept.
    ``want_state=False`` allows ``None`` in place of the final membrane (the compiled kernel then skips it; with the
    default ``v0`` it also never makes, reads or keeps a ``[...]`` initial membrane).
    """
    if impl == "reference":
        return _MultiStepNeuron.apply(x_seq, k, _kernels._or_resting(v0, x_seq, spec), spec, surrogate)
    if impl not in (None, "torch", "native"):
        from ..errors import SpikeformerError

        raise SpikeformerError(f"unknown neuron kernel impl={impl!r}; use None (auto), 'native', 'torch' or 'reference'")
    if impl == "native" and not _kernels._native.supports(x_seq, k, v0, spec, surrogate):
        from ..errors import SpikeformerError

        why = _kernels._native.build_error() or "this call (device, dtype or surrogate) is not supported by it"
        raise SpikeformerError(f"the compiled neuron kernel cannot run: {why}")
    needs_grad = torch.is_grad_enabled() and (
        x_seq.requires_grad or (v0 is not None and v0.requires_grad) or (k is not None and k.requires_grad)
    )
    if impl is not None:
        if not needs_grad:
            return _kernels.forward_no_grad(x_seq, k, v0, spec, surrogate, impl=impl, want_state=want_state)
        if impl == "native":
            return _kernels._native.NativeMultiStep.apply(x_seq, k, v0, spec, surrogate, want_state)
        return _kernels.TorchMultiStep.apply(x_seq, k, _kernels._or_resting(v0, x_seq, spec), spec, surrogate)
    kernel = _kernels.select_kernel(x_seq)
    if kernel is _kernels.default_kernel:
        if not needs_grad:
            # inference / no_grad: the same forward without the saved H and without an autograd node
            return _kernels.forward_no_grad(x_seq, k, v0, spec, surrogate, None, want_state)
        return kernel(x_seq, k, v0, spec, surrogate, want_state)
    return kernel(x_seq, k, _kernels._or_resting(v0, x_seq, spec), spec, surrogate)


def single_step(x: torch.Tensor, v: torch.Tensor, spec: NeuronSpec, surrogate: Surrogate, k=None):
    """One time step with explicit state, differentiable by autograd: returns ``(spike, new membrane)``."""
    h = _charge(x.to(v.dtype), v, spec, k)
    s = surrogate.spike(h - spec.v_threshold)
    s_r = s.detach() if spec.detach_reset else s
    return s.to(x.dtype), _reset(h, s_r, spec)
