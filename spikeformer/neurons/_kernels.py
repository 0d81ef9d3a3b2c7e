"""The neuron kernels as the neurons call them: the device dispatch of :mod:`spikeformer.kernels` for the neuron
operation, under the names this module has always had (``register_kernel`` is public API).

:func:`select_kernel` maps a tensor to a kernel ``apply(x_seq, k, v0, spec, surrogate) -> (spikes, final
membrane)``: one registered for its device type with :func:`register_kernel` (``spikeformer.kernels.register``
for the ``"neuron"`` operation), else :func:`default_kernel`, the built-in backends (the compiled CPU kernel where
it can run the call, else the pure-PyTorch kernel). The pure-PyTorch kernel's names (``TorchMultiStep``,
``state_dtype``, ...) are read from, and written to, :mod:`spikeformer.kernels.torch.neuron`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import kernels
from ..kernels import params as _params_module
from ..kernels._shim import forward_attributes
from ..kernels.cpu import neuron as _cpu_neuron
from ..kernels.torch import neuron as _torch_neuron
from . import _native  # noqa: F401  (read as _kernels._native by neurons/functional.py)

# the registry of the neuron operation itself: kernels registered here or with kernels.register are the same
_KERNELS = kernels._REGISTERED[kernels.NEURON]


def register_kernel(device_type: str, fn: Callable) -> None:
    """Register ``fn(x_seq, k, v0, spec, surrogate) -> (spikes, v_last)`` (an autograd-aware callable) for a
    device type such as ``'cuda'``; it then replaces the built-in kernels there."""
    kernels.register(kernels.NEURON, device_type, fn)


def default_kernel(x_seq, k, v0, spec, surrogate, want_state=True):
    """The built-in kernels: the compiled CPU kernel where it can run the call, else the pure-PyTorch one.
    ``v0=None``: the resting membrane; ``want_state=False`` lets the compiled kernel skip the final membrane."""
    return kernels.builtin(kernels.NEURON, x_seq)(x_seq, k, v0, spec, surrogate, want_state)


def select_kernel(x_seq: torch.Tensor) -> Callable:
    """The kernel for ``x_seq``'s device: a registered one, else :func:`default_kernel`."""
    return kernels.registered(kernels.NEURON, x_seq) or default_kernel


def forward_no_grad(x_seq, k, v0, spec, surrogate=None, impl=None, want_state=True):
    """The built-in kernels' forward when nothing needs a gradient: no saved ``H``, no autograd node.
    ``impl="torch"`` forces the pure-PyTorch kernel, ``"native"`` the compiled one. ``v0=None``: the resting
    membrane."""
    with torch.no_grad():
        if impl == "torch":
            return _torch_neuron.forward_no_grad(x_seq, k, v0, spec, want_state)
        if impl == "native":
            return _cpu_neuron.forward_no_grad(x_seq, k, v0, spec, surrogate, want_state)
        return default_kernel(x_seq, k, v0, spec, surrogate, want_state)


forward_attributes(
    __name__,
    {_torch_neuron: ["state_dtype", "initial_membrane", "_surrogate_grad_", "_run", "TorchMultiStep"]},
    renamed={"_or_resting": (_torch_neuron, "or_resting"), "_pow2": (_params_module, "is_pow2")},
)
