"""bf16 autocast on CPUs without bf16 instructions: the products in fp32 on the bf16 values.

On a CPU without AVX512-BF16 or AMX, PyTorch's bf16 matrix products and convolutions take a scalar reference path.
Measured on an AMD EPYC (AVX2, 2 threads, torch 2.14): ``[8192, 384] @ [384, 1536]`` in bf16 took 7.5 s, in fp32
83 ms; a bf16 training step of Spikformer 4-384 spent 97 % of its time there. Autocast then makes a model about two
orders of magnitude slower instead of faster.

On such CPUs the fast path computes what autocast's bf16 product computes, with fp32 kernels: the operands are rounded
to bf16 (as autocast casts them) and converted back to fp32, which is exact; the products are summed in fp32 (as
oneDNN's bf16 GEMMs sum them); the result is rounded to bf16. It differs from a native bf16 product only by the order
of the fp32 sums. Gradients keep autocast's roundings too: the casts are ordinary autograd operations, so the input
gradient is rounded to bf16 and the weight gradient to bf16 and back to fp32, as through autocast's own casts.

:func:`active` says whether a call takes this route (CPU tensor, bf16 autocast, no native bf16, not while
``torch.compile`` traces); :func:`emulation` forces it on or off (tests; a CPU with native bf16).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from typing import Callable, Iterator, Optional

import torch

_forced: Optional[bool] = None


@functools.lru_cache(maxsize=None)
def native() -> bool:
    """Whether this CPU has bf16 GEMM instructions (AVX512-BF16 or AMX); elsewhere bf16 products are emulated."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@functools.lru_cache(maxsize=None)
def amx() -> bool:
    """Whether this CPU has AMX tiles, where oneDNN's bf16 GEMMs and convolutions run several times faster than on
    AVX512-BF16 (``[8192, 384] x [384, 384]`` in 0.75 ms on 2 cores of an Intel Xeon)."""
    return bool(torch.cpu._is_amx_tile_supported())


@contextlib.contextmanager
def emulation(on: bool) -> Iterator[None]:
    """Within the block, bf16 autocast products take the fp32 route (``on=True``) or PyTorch's bf16 operations
    (``on=False``) whatever the CPU has."""
    global _forced
    saved, _forced = _forced, on
    try:
        yield
    finally:
        _forced = saved


def emulated() -> bool:
    """Whether bf16 products on this CPU take the fp32 route (no native bf16, or forced by :func:`emulation`)."""
    return (not native()) if _forced is None else _forced


def _autocast(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def active(x: torch.Tensor) -> bool:
    """Whether a product of ``x`` takes the fp32 route here: a CPU tensor under bf16 autocast, bf16 products
    :func:`emulated`, not traced by ``torch.compile`` (a compiled graph keeps autocast's operations)."""
    return _autocast(x) and emulated() and not torch.compiler.is_compiling()


def native_autocast(x: torch.Tensor) -> bool:
    """Whether products of ``x`` are PyTorch's bf16 ones: a CPU tensor under bf16 autocast, bf16 products not
    :func:`emulated` (oneDNN's bf16 GEMMs and convolutions)."""
    return _autocast(x) and not emulated()


def fp32_products(x: torch.Tensor) -> bool:
    """Whether products of ``x`` are computed in fp32: an fp32 tensor outside autocast, or bf16 autocast where it is
    emulated (:func:`active`). Layers that choose a route by precision then choose the fp32 one."""
    return (x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)) or active(x)


def rounded(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` rounded to bf16 and back to fp32 (the values a bf16 product sees, exactly), through autograd."""
    return None if t is None else t.to(torch.bfloat16).float()


def call(fn: Callable[..., Optional[torch.Tensor]], x: torch.Tensor,
         *params: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``fn(x, *params)`` as bf16 autocast would compute it, on fp32 kernels: ``x`` and ``params`` (weights, bias)
    rounded to bf16 and back, ``fn`` run with autocast off, its result rounded to bf16. ``None`` if ``fn`` gives
    ``None`` (a kernel that does not apply)."""
    with torch.autocast("cpu", enabled=False):
        y = fn(rounded(x), *(rounded(p) for p in params))
    return None if y is None else y.to(torch.bfloat16)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for bf16 ``a`` and ``b``: fp32 sums of the exact fp32 values where bf16 products are
    :func:`emulated`, rounded to bf16; PyTorch's bf16 product elsewhere (and for other dtypes)."""
    if a.dtype == torch.bfloat16 and b.dtype == torch.bfloat16 and a.device.type == "cpu" and emulated():
        return a.float().mm(b.float()).to(torch.bfloat16)
    return a.mm(b)


def apply(fn: Callable[..., torch.Tensor], x: torch.Tensor, *params: Optional[torch.Tensor]) -> torch.Tensor:
    """``fn(x, *params)``; where a bf16 product would be emulated (:func:`active`), computed as :func:`call` does
    (fp32 sums of the bf16 values, the result in bf16)."""
    return call(fn, x, *params) if active(x) else fn(x, *params)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)`` through :func:`apply`."""
    return apply(torch.matmul, a, b)


def rounded_module(m: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``m`` (a convolution or Linear) whose ``weight`` and ``bias`` are its parameters
    :func:`rounded` (through autograd: the gradients reach the parameters, rounded as autocast's casts round them)."""
    c = copy.copy(m)
    c._parameters = {}
    for name, p in m._parameters.items():
        setattr(c, name, rounded(p))
    return c


def call_module(fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], m: torch.nn.Module,
                x: torch.Tensor) -> torch.Tensor:
    """``fn(m, x)`` as bf16 autocast would compute it, on fp32 kernels: ``fn`` gets :func:`rounded_module` of ``m``
    and the rounded ``x``, runs with autocast off, and its result is rounded to bf16 (:func:`call` for a module's
    parameters). The caller checks :func:`active` and that nothing observes ``m`` (hooks would see the copy)."""
    with torch.autocast("cpu", enabled=False):
        y = fn(rounded_module(m), rounded(x))
    return y.to(torch.bfloat16)


def autocast_free(backward: Callable) -> Callable:
    """For the ``backward`` of the compiled kernels' autograd Functions: run it with CPU autocast off, so that a
    backward pass called inside an autocast region (PyTorch advises against it, but it happens) does not cast the
    kernels' fp32 products to bf16 (their ``out=`` buffers are fp32); the kernels choose their dtypes themselves."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        if not torch.is_autocast_enabled("cpu"):
            return backward(ctx, *grads)
        with torch.autocast("cpu", enabled=False):
            return backward(ctx, *grads)
    return run
