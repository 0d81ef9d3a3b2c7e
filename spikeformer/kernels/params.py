"""What a neuron kernel is asked to compute, as one typed object.

A multi-step neuron layer (LIF / IF / PLIF, SpikingJelly's equations, see ``spikeformer/neurons/functional.py``)
is fixed by its reset mode, threshold and reset value, whether the reset carries a gradient, its charge equation
(leaky or not, the input decayed or not, a fixed ``tau`` or a learnable rate) and its surrogate gradient.
:class:`NeuronParams` holds exactly that, so every backend reads the same fields and the compiled kernels fill
their C structure from it in one place (``cpu/neuron.py``). :func:`surrogate_kind` is the one place where a
surrogate instance is recognised: a compiled kernel has the Sigmoid and ATan gradients built in, anything else
(a subclass, a user's surrogate) runs through PyTorch.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Optional


class ResetMode(enum.Enum):
    """Hard: the membrane is set to ``v_reset`` after a spike. Soft: ``v_threshold`` is subtracted."""

    HARD = "hard"
    SOFT = "soft"


class SurrogateKind(enum.Enum):
    """The surrogate gradients the kernels know by name (Heaviside forward, this derivative in backward)."""

    SIGMOID = "sigmoid"
    ATAN = "atan"
    RECT = "rect"
    OTHER = "other"  # any other Surrogate: backends call its ``grad``


def surrogate_kind(surrogate: Any) -> SurrogateKind:
    """The kind of a surrogate instance. Only the exact built-in classes count: a subclass may change ``grad``."""
    from ..neurons import surrogate as S  # the classes live above the kernels; imported when first asked

    kind = {S.Sigmoid: SurrogateKind.SIGMOID, S.ATan: SurrogateKind.ATAN, S.Rectangle: SurrogateKind.RECT}
    return kind.get(type(surrogate), SurrogateKind.OTHER)


def is_pow2(x: float) -> bool:
    """``x`` is a positive power of two (then ``x / tau == x * (1 / tau)`` exactly)."""
    m, _ = math.frexp(x)
    return x > 0 and m == 0.5


@dataclass(frozen=True)
class NeuronParams:
    """The static settings of one neuron kernel call.

    ``v_reset`` is the membrane a hard reset sets and the resting membrane; with a soft reset it is 0.
    ``tau`` is the fixed time constant of a LIF, ``None`` for IF and for a PLIF (whose rate ``k = 1/tau`` is a
    tensor passed with the call). ``alpha`` is the surrogate's sharpness (``nan`` when it has none).
    """

    reset: ResetMode
    v_threshold: float
    v_reset: float
    detach_reset: bool
    decay_input: bool
    leaky: bool
    tau: Optional[float]
    surrogate: SurrogateKind
    alpha: float

    @classmethod
    def from_spec(cls, spec: Any, surrogate: Any) -> "NeuronParams":
        """From a :class:`spikeformer.neurons.functional.NeuronSpec` and a surrogate instance."""
        hard = spec.v_reset is not None
        return cls(
            reset=ResetMode.HARD if hard else ResetMode.SOFT,
            v_threshold=float(spec.v_threshold),
            v_reset=float(spec.v_reset) if hard else 0.0,
            detach_reset=bool(spec.detach_reset),
            decay_input=bool(spec.decay_input),
            leaky=bool(spec.leaky),
            tau=None if (spec.tau is None or not spec.leaky) else float(spec.tau),
            surrogate=surrogate_kind(surrogate),
            alpha=float(getattr(surrogate, "alpha", math.nan)),
        )

    @classmethod
    def from_module(cls, neuron: Any) -> "NeuronParams":
        """From a neuron layer (:class:`spikeformer.neurons.LIF`, ``IF``, ``PLIF``): its ``spec()`` and
        ``surrogate``."""
        return cls.from_spec(neuron.spec(), neuron.surrogate)

    @property
    def hard(self) -> bool:
        return self.reset is ResetMode.HARD

    @property
    def learnable_rate(self) -> bool:
        """A PLIF: leaky with its rate passed as a tensor rather than a fixed ``tau``."""
        return self.leaky and self.tau is None

    @property
    def exact_rate(self) -> bool:
        """The charge ``v + (x - v) / tau`` may be computed as ``v + (x - v) * (1 / tau)`` bit for bit: a fixed
        power-of-two ``tau``, the input decayed, and a zero reset value."""
        return self.leaky and self.tau is not None and is_pow2(self.tau) and self.decay_input and self.v_reset == 0.0
