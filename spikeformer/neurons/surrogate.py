"""Surrogate gradients for the Heaviside spike function.

Forward is always Heaviside(x) with Heaviside(0) = 1 (``x >= 0``), as in SpikingJelly. Each surrogate only
defines the derivative used in backward, ``grad(x)``, where ``x = H - V_th``.
"""

from __future__ import annotations

import abc
import math

import torch


class Surrogate(abc.ABC):
    """Base class. Subclasses implement :meth:`grad` (d spike / d x) as a pure tensor function."""

    alpha: float

    @abc.abstractmethod
    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative at ``x = H - V_th``."""

    def spike(self, x: torch.Tensor) -> torch.Tensor:
        """Heaviside with a surrogate gradient, for single-step use outside the fused neuron kernels."""
        return _SurrogateSpike.apply(x, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.alpha == other.alpha  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.alpha))


class Sigmoid(Surrogate):
    """sigma'(alpha x) * alpha: SpikingJelly ``surrogate.Sigmoid`` (Spikformer App. C.1, Eq. 20; alpha = 4)."""

    def __init__(self, alpha: float = 4.0):
        self.alpha = float(alpha)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1.0 - s)


class ATan(Surrogate):
    """alpha/2 / (1 + (pi/2 alpha x)^2): SpikingJelly ``surrogate.ATan`` (SpikingResformer uses alpha = 2)."""

    def __init__(self, alpha: float = 2.0):
        self.alpha = float(alpha)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2.0) / (1.0 + (math.pi / 2.0 * self.alpha * x) ** 2)


class Rectangle(Surrogate):
    """Rectangular surrogate of the official code: ``grad = 1/alpha`` for ``|x| < alpha/2``, else 0.

    ``alpha`` is the window width ``a`` of the MA-SNN configs (``lens = a/2``; a=0.5 on Gesture/Gait, 1 on
    CIFAR10-DVS and in Att-Res-SNN), so the window has unit area.
    """

    def __init__(self, alpha: float = 0.5):
        self.alpha = float(alpha)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() < self.alpha / 2).to(x.dtype) / self.alpha


class _SurrogateSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


SURROGATES = {"sigmoid": Sigmoid, "atan": ATan, "rect": Rectangle}


def build_surrogate(spec) -> Surrogate:
    """A surrogate from an instance, a name ('sigmoid', 'atan') or a dict {'type': name, 'alpha': a}."""
    from ..errors import SpikeformerError

    if isinstance(spec, Surrogate):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, dict):
        kind = str(spec.get("type", "")).lower()
        if kind in SURROGATES:
            return SURROGATES[kind](**{k: v for k, v in spec.items() if k != "type"})
        raise SpikeformerError(f"unknown surrogate {spec.get('type')!r}; choose one of {sorted(SURROGATES)}")
    raise SpikeformerError(f"cannot build a surrogate from {spec!r}; pass 'sigmoid', 'atan' or an instance")
