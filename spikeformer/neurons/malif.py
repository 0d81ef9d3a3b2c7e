"""The LIF neuron of MA-SNN's official code (Yao et al., "Attention Spiking Neural Networks", TPAMI 2023)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import SpikeformerError
from .surrogate import Rectangle, Surrogate


class MALIF(nn.Module):
    """The LIF of ``MA_SNN/module/LIF.py`` (multi-step over ``[T, ...]``), per step::

        u = h + x;  s = H(u - V_th);  h = decay * (s * V_th + (1 - s) * u) + beta

    A spike sets the membrane to V_th (not 0) before the decay, as the official update does (its ``Vreset`` is
    never used), and the gradient flows through the spike in the reset (no detach).
    """

    def __init__(self, decay: float = 0.3, v_threshold: float = 0.3, beta: float = 0.0,
                 surrogate: Optional[Surrogate] = None):
        super().__init__()
        self.decay, self.v_threshold, self.beta = float(decay), float(v_threshold), float(beta)
        self.surrogate = surrogate if surrogate is not None else Rectangle(0.5)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 2:
            raise SpikeformerError(f"MALIF expects input [T, ...] with time first; got shape {tuple(x_seq.shape)}")
        h = torch.zeros_like(x_seq[0])
        out = []
        for x in x_seq:
            u = h + x
            s = self.surrogate.spike(u - self.v_threshold)
            h = (s * self.v_threshold + (1.0 - s) * u) * self.decay + self.beta
            out.append(s)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, v_threshold={self.v_threshold}, beta={self.beta}, surrogate={self.surrogate!r}"
