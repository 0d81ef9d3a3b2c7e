"""Integer-valued spiking neurons (I-LIF / MultiSpike / NI-LIF) and their expansion into binary spikes.

Spike-driven Transformer V3, SpikeYOLO and Spike2Former train on integer spike counts and run on binary spikes:

* **I-LIF** (SpikeYOLO, ``mem_update``; SpikingJelly 2.0 ``ILIFNode``): ``H[t] = decay * V[t-1] + X[t]``,
  ``C[t] = round(clip(H[t] / V_th, 0, D))``, ``V[t] = H[t] - C[t] V_th`` (soft reset by the count, the reset detached);
  ``decay = 1 - 1/tau`` (SpikeYOLO: 0.25, SpikingJelly: ``tau = 4/3``).
* **MultiSpike** (SDT-V3 ``MultiSpike``) and **NI-LIF** (Spike2Former ``MultiSpike_norm``): no membrane across steps
  (``decay=None``), ``C[t] = round(clip(X[t], 0, D))``; NI-LIF divides the count by ``norm`` (= D).

One module covers the three: :class:`IntegerLIF` with ``D`` levels, ``decay`` (``None``: stateless), ``v_threshold`` and
``norm`` (the output is ``C / norm``; ``None`` keeps the integer count). The gradient of the rounding is straight-through
inside ``[0, D]`` and zero outside (the official ``Quant`` backward).

:func:`expand_integer_spikes` turns counts ``[T, ...]`` into binary spikes ``[D*T, ...]``: the count ``v`` of step ``t``
becomes the first ``v`` of its ``D`` sub-steps (``convert_integer_to_binary.py`` of SpikeYOLO). A layer that is linear in
its input sees the same total over the D sub-steps as it sees from the count (:func:`sum_substeps`), which is why the
binary model gives the integer model's outputs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import SpikeformerError


class _RoundClip(torch.autograd.Function):
    """``round(clip(x, 0, D))`` with the straight-through gradient inside ``[0, D]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, D: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.D = D
        return torch.round(torch.clamp(x, 0, D))

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        return g * ((x >= 0) & (x <= ctx.D)).to(g.dtype), None


def round_clip(x: torch.Tensor, D: int) -> torch.Tensor:
    return _RoundClip.apply(x, D)


class IntegerLIF(nn.Module):
    """Multi-step integer-valued neuron over ``[T, ...]`` (I-LIF with ``decay``, MultiSpike / NI-LIF without).

    ``D``: the largest count per step; ``decay``: membrane kept per step (``None``: no membrane, each step alone);
    ``v_threshold``: the membrane that one spike stands for; ``norm``: the output is ``count / norm`` (NI-LIF:
    ``norm=D``; ``None``: the integer count). Like every neuron here it keeps no state between calls.
    """

    def __init__(self, D: int = 4, decay: Optional[float] = 0.25, v_threshold: float = 1.0,
                 norm: Optional[float] = None, tau: Optional[float] = None, **_ignored):
        super().__init__()
        if int(D) < 1:
            raise SpikeformerError(f"IntegerLIF needs D >= 1 levels; got D={D}")
        if tau is not None:  # SpikingJelly's ILIFNode spelling: decay = 1 - 1/tau
            decay = 1.0 - 1.0 / float(tau)
        if decay is not None and not 0.0 <= float(decay) < 1.0:
            raise SpikeformerError(f"IntegerLIF needs 0 <= decay < 1 (or decay=None); got decay={decay}")
        self.D = int(D)
        self.decay = None if decay is None else float(decay)
        self.v_threshold = float(v_threshold)
        self.norm = None if norm is None else float(norm)

    def counts(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Integer spike counts ``[T, ...]`` (before ``norm``)."""
        if x_seq.dim() < 1:
            raise SpikeformerError(f"IntegerLIF expects input [T, ...]; got shape {tuple(x_seq.shape)}")
        vth = self.v_threshold
        if self.decay is None:
            return round_clip(x_seq / vth if vth != 1.0 else x_seq, self.D)
        out = []
        v = None
        for t in range(x_seq.shape[0]):
            h = x_seq[t] if v is None else v * self.decay + x_seq[t]
            c = round_clip(h / vth if vth != 1.0 else h, self.D)
            v = h - c.detach() * vth  # soft reset by the count; the reset carries no gradient (official detach)
            out.append(c)
        return torch.stack(out)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        c = self.counts(x_seq)
        return c / self.norm if self.norm is not None else c

    def extra_repr(self) -> str:
        return f"D={self.D}, decay={self.decay}, v_threshold={self.v_threshold}, norm={self.norm}"


def expand_integer_spikes(counts: torch.Tensor, D: int) -> torch.Tensor:
    """Counts ``[T, ...]`` in ``0..D`` -> binary spikes ``[D*T, ...]``: sub-step ``j`` of step ``t`` (index ``t*D + j``)
    fires when ``j < count[t]``."""
    c = torch.round(counts.detach())
    if bool((c < 0).any()) or bool((c > D).any()) or not torch.equal(c, counts.detach()):
        raise SpikeformerError(f"expand_integer_spikes takes integer counts in [0, {D}]; scale normalised outputs "
                               "back to counts first (multiply by norm)")
    steps = torch.arange(D, device=counts.device, dtype=counts.dtype).view(1, D, *([1] * (counts.dim() - 1)))
    binary = (steps < counts.unsqueeze(1)).to(counts.dtype)  # [T, D, ...]
    return binary.flatten(0, 1)


def sum_substeps(x: torch.Tensor, D: int) -> torch.Tensor:
    """``[D*T, ...]`` -> ``[T, ...]``: the sum over each step's D sub-steps (what a binary layer accumulates)."""
    if x.shape[0] % D:
        raise SpikeformerError(f"sum_substeps: {x.shape[0]} steps is not a multiple of D={D}")
    return x.unflatten(0, (x.shape[0] // D, D)).sum(1)
