"""The one numerics setting of a model: ``"fast"`` (the default) or ``"exact"``.

``exact`` runs the official code's own operations in the official code's tensor layouts (a 1x1 ``Conv1d`` where the
official code projects tokens with one, BatchNorm over the same view, convolutions on NCHW frames), so that given the
same weights and input the logits are bit-identical to the official implementation on any CPU with the same PyTorch.
``fast`` lets every block take its faster kernels (fused BatchNorm + neuron, compiled spike attention, products over
nonzero spikes, channels-last frames, oneDNN GEMMs); outputs then differ from the exact path by float rounding only,
and a fast kernel that does not pay for a call's shape, density or dtype falls back by itself.

Blocks are numerics-aware modules: they carry a ``numerics`` attribute (class default ``"fast"``) and pick their own
kernels from it. :func:`set_numerics` sets it on every such module of a model; ``spikeformer.create_model(...,
numerics="exact")`` and ``--set numerics=exact`` on the CLI call it. Under autocast (bf16/fp16) there is no bit-exact
reference, so blocks take their fast kernels whatever the setting.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import SpikeformerError

NUMERICS = ("fast", "exact")


def check_numerics(mode: str) -> str:
    if mode not in NUMERICS:
        raise SpikeformerError(f"numerics must be 'fast' or 'exact'; got {mode!r}")
    return mode


class NumericsAware:
    """Mixin for modules with a fast and an exact path. ``numerics`` is a plain attribute (not a buffer), so it is
    not part of the state_dict and checkpoints move freely between the two."""

    numerics: str = "fast"

    @property
    def fast(self) -> bool:
        return self.numerics == "fast"


def wants_fast(module: nn.Module, x: torch.Tensor | None = None) -> bool:
    """Whether ``module`` should take its fast kernels for input ``x``: its numerics is ``fast``, or the input is in
    reduced precision (autocast or bf16/fp16 tensors), where no bit-exact reference exists."""
    if getattr(module, "numerics", "exact") == "fast":
        return True
    if x is None:
        return False
    return torch.is_autocast_enabled(x.device.type) or x.dtype in (torch.bfloat16, torch.float16)


def set_numerics(model: nn.Module, mode: str) -> int:
    """Put every numerics-aware module of ``model`` on ``mode`` (``"fast"`` or ``"exact"``); plain ``nn.Linear``
    layers become :class:`~spikeformer.layers.linear.OneDNNLinear` in fast mode (oneDNN fp32 GEMMs on CPU) and back.
    Returns how many modules changed. The model remembers the setting in ``model.numerics``."""
    from .linear import OneDNNLinear  # the Linear swap lives with the class

    check_numerics(mode)
    n = 0
    for m in model.modules():
        if isinstance(m, NumericsAware):
            if m.numerics != mode:
                m.numerics = mode
                n += 1
        elif mode == "fast" and type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
        elif mode == "exact" and type(m) is OneDNNLinear:
            m.__class__ = nn.Linear
            n += 1
    if not isinstance(model, NumericsAware):
        model.numerics = mode
    return n


@contextlib.contextmanager
def numerics(model: nn.Module, mode: str):
    """Run ``model`` on ``mode`` inside the ``with`` block and put every module back as it was afterwards (the
    energy report and attention maps observe the official operations: compiled kernels are invisible to hooks)."""
    from .linear import OneDNNLinear

    saved = [(m, m.numerics) for m in model.modules() if isinstance(m, NumericsAware)]
    onednn = {id(m) for m in model.modules() if type(m) is OneDNNLinear}
    had = getattr(model, "numerics", None)
    set_numerics(model, mode)
    try:
        yield model
    finally:
        for m, mode_m in saved:
            m.numerics = mode_m
        for m in model.modules():
            if type(m) in (nn.Linear, OneDNNLinear):
                m.__class__ = OneDNNLinear if id(m) in onednn else nn.Linear
        if had is not None and not isinstance(model, NumericsAware):
            model.numerics = had


def numerics_of(model: nn.Module) -> str:
    """The numerics a model was put on (``"fast"`` for a model :func:`set_numerics` never saw)."""
    return getattr(model, "numerics", "fast")
