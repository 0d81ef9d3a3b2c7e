"""Kernels: one implementation per operation and device, and the one dispatch that picks among them.

Operations (the names below) and their signatures, the same for every backend:

* ``neuron(x_seq, k, v0, spec, surrogate) -> (spikes, final membrane)``: a multi-step LIF / IF / PLIF layer over
  ``[T, ...]`` (``k``: a PLIF's rate tensor or ``None``; ``v0``: the initial membrane). The built-in backends also
  take ``v0=None`` (the resting membrane) and ``want_state=False`` (no final membrane needed).
* ``bn_neuron(x, weight, bias, running_mean, running_var, eps, training, spec, surrogate, bias_left_out=None)
  -> (spikes, batch mean, batch var)``: BatchNorm over ``x`` ``[T, ..., C]`` (channel last) feeding a neuron.
* ``attention(q, k, v, heads, scale) -> out``: ``(Q K^T V) * scale`` per head of tokens ``[..., N, C]``, fp32.
* ``sparse_linear(x2d, weight, bias, dtype, max_density=1.0)`` and ``sparse_conv3x3(x, weight, bias, dtype,
  max_density=1.0)``: products over nonzero spikes in the compute ``dtype`` (``None`` when the input is denser
  than ``max_density`` and the caller's dense product is faster).
  For denser 0/1 spikes in fp32 the layers call the compiled table-lookup products of ``kernels/cpu/lut.py``
  (same results up to the order of fp32 sums; ``spikeformer.layers.sparse`` chooses between the two by density).
  3x3 convolutions in fp32 (their forward, data and weight gradients) run by Winograd F(4x4, 3x3) where it pays
  (``kernels/cpu/winograd.py``: 4x fewer multiply-adds, results within fp32 rounding of the direct convolution).
* ``max_pool(x) -> y``: 3x3, stride 2, padding 1 max-pool of frames ``[N, C, H, W]``.
* ``linear(x, weight, bias) -> y``: a token-wise Linear.
* ``gate_stats(x) -> (S, M)``, ``gate_pool(x, w) -> (A, X)`` and ``gate_apply(x, w, s) -> y``: the pooled statistics
  and the gating of MA-SNN's attention over channels-last frames ``[N, P, C]`` (``kernels/torch/gates.py``).

Built-in backends, in the order :func:`select` tries them: ``cpu`` (``kernels/cpu``: CPU tensors; compiled C++
built on first use, off with ``SPIKEFORMER_NATIVE=0`` or without a C++ compiler, and oneDNN for ``linear``) and
``torch`` (``kernels/torch``: every device, the reference). A backend hands the calls it cannot run (a dtype, layout or
surrogate it has no kernel for) to the reference itself, so what :func:`select` returns runs any call. A kernel for
another device type (e.g. a Triton kernel for CUDA) is added with :func:`register` without touching the layers or
the models; it then wins on that device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

from ..errors import SpikeformerError
from . import cpu as _cpu
from . import torch as _ref
from .params import NeuronParams, ResetMode, SurrogateKind, surrogate_kind

NEURON = "neuron"
BN_NEURON = "bn_neuron"
ATTENTION = "attention"
SPARSE_LINEAR = "sparse_linear"
SPARSE_CONV3X3 = "sparse_conv3x3"
MAX_POOL = "max_pool"
LINEAR = "linear"
GATE_STATS = "gate_stats"
GATE_POOL = "gate_pool"
GATE_APPLY = "gate_apply"
OPS = (NEURON, BN_NEURON, ATTENTION, SPARSE_LINEAR, SPARSE_CONV3X3, MAX_POOL, LINEAR, GATE_STATS, GATE_POOL, GATE_APPLY)


@dataclass(frozen=True)
class Backend:
    """A built-in implementation of some operations for one device type (``None``: every device)."""

    name: str
    device_type: Optional[str]
    ops: Mapping[str, Callable] = field(repr=False)
    is_available: Callable[[str], bool] = field(repr=False)  # op -> whether it can run here

    def serves(self, device_type: str) -> bool:
        return self.device_type is None or self.device_type == device_type

    @property
    def device(self) -> str:
        """A device this backend runs on (``"cpu"`` for the device-independent reference)."""
        return self.device_type or "cpu"


_BACKENDS = (
    Backend("cpu", "cpu", {
        NEURON: _cpu.neuron.neuron,
        BN_NEURON: _cpu.bn_neuron.bn_neuron,
        ATTENTION: _cpu.attention.attention,
        SPARSE_LINEAR: _cpu.sparse.sparse_linear,
        SPARSE_CONV3X3: _cpu.sparse.sparse_conv3x3,
        MAX_POOL: _cpu.pool.max_pool,
        LINEAR: _cpu.linear.linear,
        GATE_STATS: _cpu.gates.gate_stats,
        GATE_POOL: _cpu.gates.gate_pool,
        GATE_APPLY: _cpu.gates.gate_apply,
    }, lambda op: op == LINEAR or _cpu.available()),  # linear binds oneDNN, not the compiled library
    Backend("torch", None, {
        NEURON: _ref.neuron.neuron,
        BN_NEURON: _ref.bn_neuron.bn_neuron,
        ATTENTION: _ref.attention.attention,
        SPARSE_LINEAR: _ref.sparse.sparse_linear,
        SPARSE_CONV3X3: _ref.sparse.sparse_conv3x3,
        MAX_POOL: _ref.pool.max_pool,
        LINEAR: _ref.linear.linear,
        GATE_STATS: _ref.gates.gate_stats,
        GATE_POOL: _ref.gates.gate_pool,
        GATE_APPLY: _ref.gates.gate_apply,
    }, lambda op: True),
)
# kernels registered for a device type, per operation; they take precedence over the built-in backends
_REGISTERED: Dict[str, Dict[str, Callable]] = {op: {} for op in OPS}


def _check(op: str) -> None:
    if op not in _REGISTERED:
        raise SpikeformerError(f"unknown kernel operation {op!r}; choose one of {list(OPS)}")


def device_type(where: Any) -> str:
    """The device type of a tensor, a ``torch.device`` or a device string (``"cuda:1"`` -> ``"cuda"``)."""
    if isinstance(where, str):
        return where.split(":", 1)[0]
    device = getattr(where, "device", where)
    return device.type


def register(op: str, device_type: str, fn: Callable) -> None:
    """Use ``fn`` (autograd-aware, with ``op``'s signature) for ``op`` on tensors of ``device_type`` (e.g.
    ``"cuda"``), in place of the built-in backends."""
    _check(op)
    _REGISTERED[op][device_type] = fn


def unregister(op: str, device_type: str) -> Optional[Callable]:
    """Remove what :func:`register` set for ``op`` on ``device_type``; returns it (``None`` if nothing was)."""
    _check(op)
    return _REGISTERED[op].pop(device_type, None)


def registered(op: str, where: Any) -> Optional[Callable]:
    """The kernel registered for ``op`` on ``where``'s device type, else ``None``."""
    _check(op)
    return _REGISTERED[op].get(device_type(where))


def builtin_backend(op: str, where: Any) -> Backend:
    """The first built-in backend that runs ``op`` on ``where``'s device and is available."""
    _check(op)
    dev = device_type(where)
    for backend in _BACKENDS:
        if op in backend.ops and backend.serves(dev) and backend.is_available(op):
            return backend
    raise SpikeformerError(f"no kernel for {op!r} on device type {dev!r}")  # unreachable: torch serves all


def builtin(op: str, where: Any) -> Callable:
    """``op`` of :func:`builtin_backend` (what :func:`select` returns when nothing is registered)."""
    return builtin_backend(op, where).ops[op]


def select(op: str, where: Any) -> Callable:
    """The implementation of ``op`` for ``where`` (a tensor, a ``torch.device`` or a device string): a kernel
    registered for its device type, else the compiled CPU backend for CPU tensors when it is available, else the
    PyTorch reference."""
    fn = registered(op, where)
    return fn if fn is not None else builtin(op, where)


def backends() -> tuple[Backend, ...]:
    """Every built-in backend, in the order :func:`select` tries them."""
    return _BACKENDS


def available_backends(op: str) -> list[Backend]:
    """The built-in backends that implement ``op`` and can run on this machine."""
    _check(op)
    return [b for b in _BACKENDS if op in b.ops and b.is_available(op)]


__all__ = [
    "ATTENTION", "BN_NEURON", "GATE_APPLY", "GATE_POOL", "GATE_STATS", "LINEAR", "MAX_POOL", "NEURON", "OPS",
    "SPARSE_CONV3X3", "SPARSE_LINEAR",
    "Backend", "NeuronParams", "ResetMode", "SurrogateKind", "available_backends", "backends", "builtin",
    "builtin_backend", "device_type", "register", "registered", "select", "surrogate_kind", "unregister",
]


def _register_gpu_kernels() -> None:
    """Register the Triton kernels (``kernels/triton``) for CUDA tensors when a GPU and Triton are present."""
    import torch  # the real torch: this package's attribute ``torch`` is the ``kernels/torch`` subpackage

    if not torch.cuda.is_available():
        return
    try:
        from . import triton as _triton  # noqa: F401  (registers itself for "cuda")
    except ImportError:  # CPU builds of torch come without Triton
        pass


_register_gpu_kernels()
