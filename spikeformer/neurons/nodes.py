"""Multi-step spiking neuron layers: LIF, IF and parametric LIF (PLIF).

Input is ``[T, ...]`` (time first). The membrane lives only inside one forward call, so a network needs no reset
between batches. For step-by-step inference (converted SNNs run hundreds of steps) use the streaming API:
``state = node.init_state(x_t)`` then ``spike, state = node.step(x_t, state)``.

Argument names follow SpikingJelly (``tau``, ``v_threshold``, ``v_reset``, ``detach_reset``, ``decay_input``,
``surrogate``); ``v_reset=None`` selects soft reset (subtract the threshold).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..errors import SpikeformerError
from . import functional as F
from .surrogate import Sigmoid, Surrogate, build_surrogate


class BaseNode(nn.Module):
    """Common settings and the streaming API; subclasses choose the charge equation."""

    leaky = True

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = False,
        surrogate: Surrogate | str | dict | None = None,
    ):
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = build_surrogate(surrogate) if surrogate is not None else Sigmoid(4.0)

    # -- what subclasses provide ------------------------------------------------------------------------------
    def spec(self) -> F.NeuronSpec:
        return F.NeuronSpec(self.v_threshold, self.v_reset, self.detach_reset, True, False, None)

    def rate(self) -> Optional[torch.Tensor]:
        """The learnable decay rate 1/tau (PLIF) or None."""
        return None

    # -- multi-step ---------------------------------------------------------------------------------------------
    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 2:
            raise SpikeformerError(
                f"{type(self).__name__} expects input [T, ...] with time first; got shape {tuple(x_seq.shape)}"
            )
        spikes, _ = F.multi_step(x_seq, self.spec(), self.surrogate, self.rate(), want_state=False)
        return spikes

    def forward_with_state(self, x_seq: torch.Tensor, v0: Optional[torch.Tensor] = None):
        """Multi-step forward from an explicit initial membrane; returns ``(spikes, final membrane)``."""
        return F.multi_step(x_seq, self.spec(), self.surrogate, self.rate(), v0)

    # -- streaming ----------------------------------------------------------------------------------------------
    def init_state(self, x_t: torch.Tensor) -> torch.Tensor:
        """The resting membrane for one time step of input shaped like ``x_t``."""
        return F.initial_membrane(x_t, self.spec()).float()

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: ``(spike, new state)``. Differentiable; the caller owns the state."""
        return F.single_step(x_t, state, self.spec(), self.surrogate, self.rate())

    def extra_repr(self) -> str:
        return (
            f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}, "
            f"surrogate={self.surrogate!r}"
        )


class IF(BaseNode):
    """Integrate-and-fire: ``H = V + X``."""

    leaky = False


class LIF(BaseNode):
    """Leaky integrate-and-fire with a fixed time constant ``tau`` (> 1)."""

    def __init__(
        self,
        tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = False,
        surrogate: Surrogate | str | dict | None = None,
    ):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate)
        if not float(tau) > 1.0:
            raise SpikeformerError(f"LIF needs tau > 1 (the membrane decays by 1/tau per step); got tau={tau}")
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def spec(self) -> F.NeuronSpec:
        return F.NeuronSpec(self.v_threshold, self.v_reset, self.detach_reset, self.decay_input, True, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class PLIF(BaseNode):
    """Parametric LIF (Fang et al. 2021): ``1/tau = sigmoid(w)`` with a learnable scalar ``w``.

    ``w`` starts at ``-log(init_tau - 1)``, so ``init_tau=2`` gives ``w = 0``; the state_dict key is ``w`` as in
    SpikingJelly's ``ParametricLIFNode``.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = False,
        surrogate: Surrogate | str | dict | None = None,
    ):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate)
        if not float(init_tau) > 1.0:
            raise SpikeformerError(f"PLIF needs init_tau > 1; got init_tau={init_tau}")
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(float(init_tau) - 1.0)))

    def spec(self) -> F.NeuronSpec:
        return F.NeuronSpec(self.v_threshold, self.v_reset, self.detach_reset, self.decay_input, True, None)

    def rate(self) -> torch.Tensor:
        return self.w.sigmoid()

    @property
    def tau(self) -> float:
        return float(1.0 / self.w.detach().sigmoid())

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4f}, decay_input={self.decay_input}, " + super().extra_repr()


NEURONS = {"lif": LIF, "if": IF, "plif": PLIF}
