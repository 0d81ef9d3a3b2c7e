"""Spiking neurons (multi-step over ``[T, ...]``) and their surrogate gradients."""

from __future__ import annotations

import functools
from typing import Any, Callable

from torch import nn

from ..errors import SpikeformerError
from .integer import IntegerLIF, expand_integer_spikes, sum_substeps
from .liaf import PLIAF
from .malif import MALIF
from .nodes import IF, LIF, NEURONS, PLIF, BaseNode
from .surrogate import ATan, Rectangle, Sigmoid, Surrogate, build_surrogate

NeuronFactory = Callable[..., nn.Module]
NEURONS.update(pliaf=PLIAF, liaf=PLIAF)  # Spikeformer's (Li et al.) analog-output neuron


class MultiSpike(IntegerLIF):
    """SDT-V3's MultiSpike: ``round(clip(x, 0, D))`` per step, no membrane."""

    def __init__(self, D: int = 4, decay=None, v_threshold: float = 1.0, norm=None, **kw):
        super().__init__(D, decay, v_threshold, norm, **kw)


class NILIF(IntegerLIF):
    """Spike2Former's NI-LIF: ``round(clip(x, 0, D)) / D`` per step, no membrane."""

    def __init__(self, D: int = 4, decay=None, v_threshold: float = 1.0, norm="D", **kw):
        super().__init__(D, decay, v_threshold, float(D) if norm == "D" else norm, **kw)


NEURONS.update(ilif=IntegerLIF, multispike=MultiSpike, nilif=NILIF)
_INTEGER_KEYS = ("D", "decay", "v_threshold", "norm")


def neuron_factory(spec: Any = "lif", **defaults: Any) -> NeuronFactory:
    """Turn a neuron description into a factory ``f(**overrides) -> nn.Module``.

    ``spec`` may be a factory/class already (returned as a partial with ``defaults``), a name ('lif', 'if',
    'plif', 'pliaf') or a dict ``{'type': 'lif', 'tau': 2.0, ...}``. Models call the factory with the per-layer overrides
    they need (e.g. ``v_threshold=0.5`` on the attention neuron), so a user's own multi-step module plugs in
    without editing model code.
    """
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, dict):
        spec = dict(spec)
        kind = str(spec.pop("type", "lif")).lower()
        if kind not in NEURONS:
            raise SpikeformerError(f"unknown neuron type {kind!r}; choose one of {sorted(NEURONS)}")
        return functools.partial(_build, NEURONS[kind], {**defaults, **spec})
    if callable(spec):
        return functools.partial(_build, spec, defaults)
    raise SpikeformerError(f"cannot build a neuron from {spec!r}; pass 'lif', 'if', 'plif', a dict or a class")


def _build(cls, defaults: dict, **overrides) -> nn.Module:
    # Model code passes LIF-style keywords; map them onto the neurons that spell them differently.
    kwargs = {**defaults, **overrides}
    if issubclass(cls, IntegerLIF):  # the LIF-style defaults a model passes (tau, surrogate, ...) do not apply
        return cls(**{k: v for k, v in kwargs.items() if k in _INTEGER_KEYS})
    if issubclass(cls, PLIF) and "tau" in kwargs:
        kwargs["init_tau"] = kwargs.pop("tau")
    if cls is IF:
        kwargs.pop("tau", None)
        kwargs.pop("decay_input", None)
    return cls(**kwargs)


__all__ = [
    "IntegerLIF", "MultiSpike", "NILIF", "expand_integer_spikes", "sum_substeps",
    "ATan", "BaseNode", "IF", "LIF", "MALIF", "PLIAF", "PLIF", "Rectangle", "Sigmoid", "Surrogate", "build_surrogate", "neuron_factory",
    "NeuronFactory",
]
