"""What every Triton kernel here shares: where the kernels can run, rounding to the input dtype, memory layouts.

Triton decides when it is imported whether jitted functions (its own ``tl.zeros``, ``tl.sum``... and these) run
compiled on a GPU or under its CPU interpreter (``TRITON_INTERPRET=1`` set before ``import triton``): a process
cannot switch later, which is why the tests run these kernels in a child process.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..params import SurrogateKind

# the surrogate gradients compiled into the neuron kernels (a constexpr of each kernel)
SURROGATES = {SurrogateKind.SIGMOID: 1, SurrogateKind.ATAN: 2, SurrogateKind.RECT: 3}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024  # neurons per program of the elementwise-in-space kernels
NUM_WARPS = 4


def interpreting() -> bool:
    """Whether Triton runs kernels under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return bool(triton.knobs.runtime.interpret)


def runs_on(device: torch.device) -> bool:
    """Whether the kernels can run on tensors of ``device``: CUDA compiled, CPU under the interpreter."""
    if device.type == "cuda":
        return not interpreting()
    return device.type == "cpu" and interpreting()


@triton.jit
def round_to(y, DT: tl.constexpr):
    """fp32 ``y`` rounded to the nearest ``DT`` value (ties to even), still fp32. Written out for bf16 because
    Triton's interpreter truncates fp32 -> bf16 where the GPU rounds; after it, ``.to(DT)`` is exact on both."""
    if DT == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16) << 16
        r = bits.to(tl.float32, bitcast=True)
    elif DT == tl.float16:
        r = y.to(tl.float16).to(tl.float32)
    else:
        r = y
    return r


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when every step ``x[t]`` is one dense block laid out alike (row-major, or channels-last frames
    ``[T, B, C, H, W]``), else a contiguous copy. Kernels work on the flat memory ``[T, N]``, so tensors made with
    ``torch.empty_like`` (same strides) line up element for element. Differentiable."""
    if x.is_contiguous():
        return x
    if x.dim() == 5 and x.stride(0) == x[0].numel() and x[0].is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def like(t: torch.Tensor, ref: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``t`` (broadcast to ``ref``'s shape) in ``ref``'s memory layout and ``dtype``, copying only when needed.
    Differentiable."""
    dtype = dtype or t.dtype
    if t.dtype == dtype and t.shape == ref.shape and t.stride() == ref.stride():
        return t
    out = torch.empty_like(ref, dtype=dtype)
    return out.copy_(t.expand(ref.shape))


def empty(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-size tensor: the placeholder of an output or input that a call does not use."""
    return torch.empty(0, dtype=dtype, device=device)
