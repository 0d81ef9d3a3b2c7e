"""Parametric leaky integrate-and-analog-fire (PLIAF) neuron, as in the Spikeformer code (Li, Lei, Yang 2022).

The official ``neuron.py`` of ``Loydian/Spikeformer`` subclasses SpikingJelly's ``ParametricLIFNode`` and changes
only what leaves the neuron: per step it charges the membrane like a PLIF (``H = V + (X - (V - V_reset)) / tau``,
``1/tau = sigmoid(w)``), fires ``S = Heaviside(H - V_th)``, outputs the *analog* value ``ReLU(H)`` taken before the
reset, then resets with ``S``. The spike therefore only shapes the membrane; with ``detach_reset=True`` (how the
ImageNet Spikeformer builds it) the surrogate gradient is never used.

Follows the neuron conventions of :mod:`spikeformer.neurons`: multi-step input ``[T, ...]``, no state kept between
calls, a ``step`` method for streaming with an explicit state, and the PLIF parameter ``w`` under the same name.
"""

from __future__ import annotations

import torch

from ..errors import SpikeformerError
from . import functional as NF
from .nodes import PLIF


class PLIAF(PLIF):
    """Parametric LIAF: PLIF dynamics, output ``ReLU(H[t])`` (the charged membrane, before the reset).

    Arguments are those of :class:`spikeformer.neurons.PLIF` (``init_tau``, ``decay_input``, ``v_threshold``,
    ``v_reset``, ``detach_reset``, ``surrogate``); defaults equal SpikingJelly's ``ParametricLIFNode``.
    """

    def _step(self, x_t: torch.Tensor, v: torch.Tensor, spec: NF.NeuronSpec, k: torch.Tensor):
        h = NF._charge(x_t, v, spec, k)
        s = self.surrogate.spike(h - spec.v_threshold)
        v = NF._reset(h, s.detach() if spec.detach_reset else s, spec)
        return torch.relu(h), v

    def forward_with_state(self, x_seq: torch.Tensor, v0: torch.Tensor | None = None):
        """Multi-step forward from an explicit initial membrane; returns ``(outputs, final membrane)``."""
        if x_seq.dim() < 2:
            raise SpikeformerError(
                f"{type(self).__name__} expects input [T, ...] with time first; got shape {tuple(x_seq.shape)}"
            )
        spec, k = self.spec(), self.rate()
        v = NF.initial_membrane(x_seq[0], spec) if v0 is None else v0
        out = []
        for t in range(x_seq.shape[0]):
            o, v = self._step(x_seq[t], v, spec, k)
            out.append(o)
        return torch.stack(out), v

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x_seq)[0]

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: ``(ReLU(H), new membrane)``; the caller owns the state."""
        return self._step(x_t, state, self.spec(), self.rate())


__all__ = ["PLIAF"]
