"""Triton kernels for CUDA: the multi-step neuron (``neuron.py``), BatchNorm + neuron (``bn_neuron.py``), spike
attention in the token layout (``attention.py``) and the integer neuron (``integer.py``).

Importing this package registers the first three with :func:`spikeformer.kernels.register` for ``"cuda"`` when a
GPU is present; each hands the calls it cannot run to the PyTorch reference, as every backend does. Every kernel
is a ``torch.library`` custom op (``torch.ops.spikeformer.triton_*``) with its autograd formula and fake-tensor
implementation registered, so ``torch.compile`` and autograd see one op.

Without a GPU the same kernels run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``): the tests
register them for ``"cpu"`` with :func:`register_kernels` and hold them to the reference.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from .. import ATTENTION, BN_NEURON, NEURON, register, registered, unregister
from . import attention, bn_neuron, integer, neuron
from .common import interpreting, runs_on

KERNELS: Dict[str, Callable] = {
    NEURON: neuron.neuron,
    BN_NEURON: bn_neuron.bn_neuron,
    ATTENTION: attention.attention,
}


def register_kernels(device_type: str = "cuda") -> None:
    """Use the Triton kernels for tensors of ``device_type`` (``"cuda"``; ``"cpu"`` under the interpreter)."""
    for op, fn in KERNELS.items():
        register(op, device_type, fn)


def unregister_kernels(device_type: str = "cuda") -> None:
    """Undo :func:`register_kernels` (a kernel someone else registered in the meantime stays)."""
    for op, fn in KERNELS.items():
        if registered(op, device_type) is fn:
            unregister(op, device_type)


if torch.cuda.is_available():
    register_kernels("cuda")

__all__ = ["KERNELS", "attention", "bn_neuron", "integer", "interpreting", "neuron", "register_kernels", "runs_on",
           "unregister_kernels"]
