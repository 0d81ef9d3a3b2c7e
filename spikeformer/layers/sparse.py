"""Linear layers and 3x3 convolutions whose input is spikes, computed over the nonzero inputs only.

Spiking transformers feed many of their Linear layers with the output of a neuron: 0/1 spikes, most of them zero
(Spikformer's MLP hidden layer fires about 3 % of the time at initialisation, the attention output a few percent).
A dense GEMM multiplies all those zeros. :func:`spike_linear` instead lists each row's nonzeros (one pass over the
input) and adds up the weight rows they select; backward forms the weight gradient over the same nonzeros. The
input gradient ``g @ W`` is dense and stays a GEMM. On the benchmark machine (bf16, ``[8192, 1536] x [1536, 384]``,
3 % of the inputs nonzero) the forward with its pass over the input takes 4.0 ms instead of 12.1 ms and the weight
gradient 3.2 ms instead of 13.2 ms (``python benchmarks/bench_sparse.py``).

:func:`spike_conv3x3` does the same for a 3x3 convolution (stride 1, padding 1) of channels-last frames: every
output pixel gathers the weight taps of its neighbours' nonzero channels (Spikformer's stem, 5-7 % nonzero: forward
plus weight gradient 2.9-3.3x faster than oneDNN's in the same script).

Both are used where a model says its input is spikes (``linear_bn_neuron(..., sparse=True)``, Spikformer's stem
after its first stage) and only on the fast path (fast kernels or autocast): sums are fp32 in another order than
the BLAS's, so outputs differ from the dense layer's by rounding (for spikes times bf16 weights every product is
exact and only the order of the fp32 sums differs). When more than :func:`max_density` of the inputs are nonzero the
dense product is faster and is used. The speed-up follows the firing rate: it is data-dependent, as on neuromorphic
hardware.

Denser fp32 inputs of 0/1 spikes (at least :data:`LUT_MIN_DENSITY` nonzero, :data:`LUT_MIN_ROWS` rows) take the
table-lookup products instead (``kernels/cpu/lut.py``): four spikes form a 4-bit code that selects one of 16
precomputed sums of four weight rows, at a cost that does not depend on the firing rate (forward plus weight gradient
about 2x the dense pair on an AVX2 CPU). Spike counts are split into their 0/1 indicator and the listed counts above
1; real-valued inputs fall through to the listing and then the dense product. On a CPU with AMX tiles spike counts
take the split products instead (``kernels/cpu/split.py``: three exact bf16 GEMMs summed in fp32), which beat the
lookups and their listed rest there; 0/1 spikes keep the lookups. A 3x3 convolution of such spikes whose
shape lets Winograd pay (``kernels/cpu/winograd.py``: from 96 channels, enough tiles and pixels) runs its forward by
Winograd instead, 1.1-1.9x the lookups, and on maps of 16x16 and more its weight gradient too.

Under bf16 autocast on a CPU without bf16 instructions both run their fp32 kernels on the bf16-rounded input and
weights, the result rounded to bf16 (``kernels/cpu/bf16.py``): what autocast computes, at fp32 speed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..kernels.cpu import bf16 as _bf16
from ..kernels.cpu import lut as _lut
from ..kernels.cpu import sparse as _native_sparse
from ..kernels.cpu import split as _split
from ..kernels.cpu import weights as _weights
from ..kernels.cpu.winograd import same_padded_3x3
from ..neurons import _native

# Above these fractions of nonzero inputs the dense products are as fast or faster (benchmarks/bench_sparse.py:
# the sparse forward plus weight gradient against the dense pair). fp32 on an AVX2 CPU: 3.2x at 8 %, 2.2x at 12 %,
# 1.4x at 20 %, 0.9x at 30 % for the linear layers; 4.0x, 2.7x, 1.2-1.6x and 0.9-1.1x for 3x3 convolutions of
# Spikformer's and SDT's stems. bf16: on a CPU with native bf16 GEMMs
# (AVX512-BF16 / AMX) 2.1-2.2x at 5 %, 1.1-1.2x at 10 %, 0.6x at 20 %; where bf16 GEMMs are emulated (AVX2) the
# sparse path is still 11x faster at 12 %.
# With AMX tiles (Intel Xeon, 2 cores: `[8192, 384] x [384, 384]` in bf16 in 0.75 ms) the dense bf16 products are
# fast enough that listing pays only for nearly silent inputs: forward plus weight gradient 1.6-2.3x at 1 %, 1.1-1.9x at
# 2 %, 0.84-1.12x at 3 %, 0.57-0.79x at 5 % (the linear layers and the stem convolutions above); the sparse forward
# alone 0.83-1.49x at 1 % and 0.55-0.87x at 2 %.
# Forward alone (inference: no weight gradient to form), fp32 linear: 1.7x at 20 %, 1.2x at 25 %, 0.8-1.4x at 30 %
# (it varies from run to run there); the 3x3 convolutions' forward alone breaks even at about 20 %, so they keep the
# training threshold.
MAX_DENSITY = 0.08  # bf16 with native bf16 GEMMs (AVX512-BF16)
MAX_DENSITY_AMX = 0.025  # bf16 on a CPU with AMX tiles
MAX_DENSITY_AMX_FORWARD = 0.01  # ... in inference
MAX_DENSITY_FP32 = 0.2
MAX_DENSITY_FP32_FORWARD = 0.25  # linear layers in inference
MAX_DENSITY_EMULATED_BF16 = 0.3


def max_density(dtype: torch.dtype, forward_only: bool = False, conv: bool = False) -> float:
    """The fraction of nonzero inputs above which the dense product is used, for the compute ``dtype``;
    ``forward_only``: no gradient will be formed (inference), ``conv``: a 3x3 convolution."""
    if dtype == torch.float32:
        return MAX_DENSITY_FP32_FORWARD if forward_only and not conv else MAX_DENSITY_FP32
    if not _bf16.native():
        return MAX_DENSITY_EMULATED_BF16
    if _bf16.amx():
        return MAX_DENSITY_AMX_FORWARD if forward_only else MAX_DENSITY_AMX
    return MAX_DENSITY


def _sampled_density(x2d: torch.Tensor) -> float:
    """The fraction of nonzeros in every 17th row of ``x2d`` (a seventeenth of a pass), to skip listing an input that
    is clearly too dense (the listing gives up only when it has gone past its budget, near the end of the input) and
    to choose between listing and table lookups. The step is prime: the rows of channels-last frames are pixels, and
    every 16th pixel of a 16- or 32-wide map is its left edge, where a zero-padded convolution fires less."""
    return _fraction_nonzero(x2d, 17)


def _fraction_nonzero(x2d: torch.Tensor, step: int = 1) -> float:
    """The fraction of nonzeros in the rows ``0, step, 2 step, ...`` of ``x2d``: one compiled pass where it can run
    (``torch.count_nonzero`` of a strided view took 2 ns per entry), else PyTorch's count."""
    rows = (x2d.shape[0] + step - 1) // step
    if (x2d.device.type == "cpu" and x2d.dtype in (torch.float32, torch.bfloat16) and x2d.is_contiguous()
            and not torch.compiler.is_compiling() and _native.library() is not None):
        return _native_sparse.count_nonzero_rows(x2d, step) / max(rows * x2d.shape[1], 1)
    sample = x2d[::step]
    return float(torch.count_nonzero(sample)) / max(sample.numel(), 1)


# At or above this fraction of nonzero inputs, fp32 products of 0/1 spikes take the table lookups
# (kernels/cpu/lut.py), whose speed does not depend on the firing rate: forward plus weight gradient about 1.9-3x the
# dense pair on an AVX2 CPU (benchmarks/bench_lut.py), where listing the nonzeros gives 1.4-2.4x at 12 % and less above.
LUT_MIN_DENSITY = 0.12
# ... and at least this many rows (tokens, or output pixels of a convolution): the kernel builds its tables per
# block of 256 rows, which a small input does not amortise (there a dense GEMM is cheap anyway)
LUT_MIN_ROWS = 512
# On a CPU with AMX tiles, fp32 products of spike counts with at least this many rows and inputs take the split
# products (kernels/cpu/split.py) instead of the lookups. Training steps, split against lookups, alternating in one
# process (python benchmarks/bench_rule_ab.py --rule split-products; Intel Xeon, 2 cores, batch 32, T=4 unless
# said): 384 inputs at 8192 rows: Spikformer 4-384 1.06x, 2-384 1.04x, QKFormer CIFAR 4-384 1.02x (0.99x when its
# 192-input products took the route too); Spikformer 4-384 at batch 16 (4096 rows) 1.03x. Fewer inputs: Spikformer
# 4-256 0.97x, Li et al.'s spikeformer_dvs_digits (32 inputs) 0.94x; fewer rows: QKFormer 10-384 (512 and 2048
# rows) 0.98x. One layer's forward and backward alone (python benchmarks/bench_lut.py --counts), 384 -> 384 and
# 384 -> 1536: 0.82-0.98x from 512 to 4096 rows, 1.00-1.01x at 8192: the layer alone does not show what the step
# gains (see benchmarks/RESULTS.md, nineteenth session).
SPLIT_MIN_ROWS = 4096
SPLIT_MIN_IN = 384


# Listing the nonzeros has a fixed cost per call (the list, its autograd Function, the kept weight layout) that a small
# product does not amortise: below these sizes the dense GEMM is faster whatever the density (the caller's
# ``max_density`` overrides). One training step of the layer, listed against dense (python benchmarks/bench_sparse.py
# --small): fp32 at 2 % and 10 % nonzero 0.46-0.65x at 32 rows, 0.58-1.08x at 128, 0.68-0.83x for 128 -> 128 up to
# 512 rows and 0.84-1.02x at 1024; from 256 rows and 2^25 multiply-adds 0.99-1.88x. bf16 on AMX tiles at 1 % and 2 %:
# 0.67-0.78x at 128 rows, 0.81-1.24x at 1024, and from 4096 rows 1.03-1.33x where the layer narrows or keeps its
# width from 384 inputs (384 -> 384, 1536 -> 384), 0.75-0.91x where it widens (384 -> 1536) and 0.86-0.98x at 128
# channels: the dense bf16 GEMM on AMX is fast, and listing pays only for a large input side.
MIN_LIST_ROWS = 256
MIN_LIST_MACS = 2 ** 25
MIN_LIST_ROWS_AMX = 4096
MIN_LIST_IN_AMX = 256
MAX_LIST_WIDENING_AMX = 1.0  # out / in features


def _worth_listing(x2d: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a product of ``x2d [R, K]`` and ``weight [N, K]`` is large enough for the listing to pay
    (:data:`MIN_LIST_ROWS`, :data:`MIN_LIST_MACS`; for bf16 products on AMX tiles :data:`MIN_LIST_ROWS_AMX` rows,
    :data:`MIN_LIST_IN_AMX` inputs and at most :data:`MAX_LIST_WIDENING_AMX` outputs per input)."""
    rows, k = x2d.shape
    n = weight.shape[0]
    if rows < MIN_LIST_ROWS or rows * k * n < MIN_LIST_MACS or torch.compiler.is_compiling():
        return False  # (traced graphs take the dense product, see _nonzeros)
    if torch.is_autocast_enabled("cpu") and _bf16.amx() and not _bf16.active(x2d):
        return rows >= MIN_LIST_ROWS_AMX and k >= MIN_LIST_IN_AMX and n <= MAX_LIST_WIDENING_AMX * k
    return True


def _density(x2d: torch.Tensor) -> float:
    if x2d.shape[0] >= 1024:
        return _sampled_density(x2d)
    return _fraction_nonzero(x2d)


def _lookup_density(x2d: torch.Tensor, weight: torch.Tensor, max_density: Optional[float]) -> Optional[float]:
    """The input's fraction of nonzeros (:func:`_density`) where the table lookups could run: fp32 products (no
    autocast), the compiled kernels, no density bound asked for by the caller, at least :data:`LUT_MIN_ROWS` rows;
    else ``None``. They are tried at :data:`LUT_MIN_DENSITY` or above; the listing reuses the sampled value."""
    if (max_density is not None or x2d.shape[0] < LUT_MIN_ROWS or torch.compiler.is_compiling()
            or _native.library() is None or _compute_dtype(x2d, weight) != torch.float32):
        return None
    return _density(x2d)


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) else None
    return torch.float32 if x.dtype == torch.float32 and weight.dtype == torch.float32 else None


def _nonzeros(x2d: torch.Tensor, weight: torch.Tensor, density: Optional[float], conv: bool = False,
              sampled: Optional[float] = None):
    """``(rows, dtype)``: the nonzeros of ``x2d [R, K]`` (:func:`spikeformer.neurons._native.sparse_rows`) with their
    values as the compute ``dtype`` has them; ``None`` if there is no compute dtype for these tensors, no compiled
    kernel, or more than ``density`` of ``x2d`` is nonzero (``None``: :func:`max_density` of the compute dtype).
    ``sampled``: :func:`_density` of ``x2d`` if the caller has it already."""
    if torch.compiler.is_compiling():  # the listing is data-dependent: compiled graphs take the dense products
        return None
    dtype = _compute_dtype(x2d, weight)
    if dtype is None or _native.library() is None:
        return None
    if density is None:
        forward_only = not (torch.is_grad_enabled() and (x2d.requires_grad or weight.requires_grad))
        density = max_density(dtype, forward_only, conv)
        if x2d.shape[0] >= 1024 and (_sampled_density(x2d) if sampled is None else sampled) > 1.25 * density:
            return None
    rows = _native.sparse_rows(x2d, density)
    if rows is None:
        return None
    if dtype != x2d.dtype:  # fp32 inputs under bf16 autocast: the values the GEMM would see
        rows[3].copy_(rows[3].to(dtype))
    return rows, dtype


def may_list(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`spike_linear` might run ``x`` over its nonzeros rather than give up for the dense product, by
    :func:`_nonzeros`' first test (the sampled density against 1.25 times :func:`max_density`). Callers that can do
    the dense product better than one Linear at a time (:func:`spikeformer.layers.blocks.linear_bn_neurons`) ask."""
    x2d = x.reshape(-1, x.shape[-1])
    dtype = _compute_dtype(x2d, weight)
    if dtype is None or torch.compiler.is_compiling() or _native.library() is None or not x.is_contiguous():
        return False
    if not _worth_listing(x2d, weight):
        # the table lookups may still run (fp32 products, directly or for emulated bf16)
        return x2d.shape[0] >= LUT_MIN_ROWS and (dtype == torch.float32 or _bf16.active(x))
    if dtype == torch.float32 or _bf16.active(x) or x2d.shape[0] < 1024:
        return True
    forward_only = not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    return _sampled_density(x2d) <= 1.25 * max_density(dtype, forward_only)


def spike_linear(linear: nn.Linear, x: torch.Tensor, with_bias: bool = True,
                 max_density: Optional[float] = None) -> Optional[torch.Tensor]:
    """``linear(x)`` (without its bias if ``with_bias=False``) over the nonzeros of ``x [..., in]``, or ``None``
    where that does not apply: more than ``max_density`` of ``x`` nonzero, no compiled kernels, not a CPU tensor,
    a dtype other than fp32 (bf16 under autocast), a non-fp32 weight. The caller then runs the dense layer."""
    weight = linear.weight
    if not (x.device.type == "cpu" and weight.device.type == "cpu" and weight.dtype == torch.float32
            and x.dim() >= 2 and x.numel() > 0 and x.shape[-1] == weight.shape[1] and x.is_contiguous()):
        return None
    bias = linear.bias if with_bias else None
    if _bf16.active(x):  # bf16 products emulated here: the fp32 kernels on the bf16 values
        return _bf16.call(lambda xr, w, b: _spike_linear(xr, w, b, max_density), x, weight, bias)
    return _spike_linear(x, weight, bias, max_density)


def _spike_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  max_density: Optional[float]) -> Optional[torch.Tensor]:
    x2d = x.view(-1, x.shape[-1])
    d = _lookup_density(x2d, weight, max_density)
    if d is not None and d >= LUT_MIN_DENSITY:
        # spike counts on AMX tiles: the split products from SPLIT_MIN_ROWS rows; 0/1 spikes (faster there by
        # lookups), fewer rows and other CPUs: the lookups
        split = x2d.shape[0] >= SPLIT_MIN_ROWS and x2d.shape[1] >= SPLIT_MIN_IN
        out = _split.split_linear(x2d, weight, bias, spikes=False) if split else None  # None without AMX
        if out is None:
            out = _lut.lut_linear(x2d, weight, bias, torch.float32)
        if out is not None:
            return out.view(*x.shape[:-1], weight.shape[0])
    if max_density is None and not _worth_listing(x2d, weight):
        return None
    found = _nonzeros(x2d, weight, max_density, sampled=d)
    if found is None:
        return None
    rows, dtype = found
    out = _native.NativeSparseLinear.apply(x2d, weight, bias, rows, dtype, _weights.layout(weight, dtype, "linear"))
    return out.view(*x.shape[:-1], weight.shape[0])


def spike_conv3x3(conv: nn.Conv2d, x: torch.Tensor,
                  max_density: Optional[float] = None) -> Optional[torch.Tensor]:
    """``conv(x)`` for channels-last frames ``x [N, C, H, W]`` over their nonzeros, or ``None`` where that does not
    apply: not a 3x3 / stride 1 / padding 1 / ungrouped / zero-padded convolution, not channels-last, frames of
    32768 pixels or more on a side, more than ``max_density`` nonzero, and the cases of :func:`spike_linear`. The
    output is channels-last."""
    weight = conv.weight
    if not (same_padded_3x3(conv) and x.dim() == 4 and x.device.type == "cpu" and x.numel() > 0
            and weight.device.type == "cpu" and weight.dtype == torch.float32 and x.shape[1] == weight.shape[1]
            and x.is_contiguous(memory_format=torch.channels_last) and max(x.shape[2:]) < 2 ** 15):
        return None
    if _bf16.active(x):  # bf16 products emulated here: the fp32 kernels on the bf16 values
        return _bf16.call(lambda xr, w, b: _spike_conv3x3(xr, w, b, max_density), x, weight, conv.bias)
    return _spike_conv3x3(x, weight, conv.bias, max_density)


def _spike_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   max_density: Optional[float]) -> Optional[torch.Tensor]:
    M, C, H, W = x.shape
    pixels = x.permute(0, 2, 3, 1).view(M * H * W, C)
    d = _lookup_density(pixels, weight, max_density)
    if d is not None and d >= LUT_MIN_DENSITY:
        out = _lut.lut_conv3x3(x, weight, bias, torch.float32)
        if out is not None:
            return out
    found = _nonzeros(pixels, weight, max_density, conv=True, sampled=d)
    if found is None:
        return None
    rows, dtype = found
    return _native.NativeSparseConv3x3.apply(x, weight, bias, rows, dtype,
                                             _weights.layout(weight, dtype, "conv3x3"))
