"""Binding of Winograd 3x3 convolutions (``winograd.cpp``), stride 1, padding 1, fp32, channels-last, as F(4x4, 3x3)
tiles and 36 GEMMs (the BLAS's batched GEMM, or oneDNN's per matrix where ``linear.bmm_into`` says it pays): 4x
fewer multiply-adds than the direct convolution (oneDNN's).

* The data gradient ``dL/dx`` (:func:`conv3x3_input_grad`): what dominates the data gradients of the spiking stems.
  The gradient through a surrogate is dense, so listing nonzeros and table lookups do not apply to it.
* The forward (:func:`conv3x3_forward`), for any input values: 1.3-2.8x oneDNN from 48 channels, and 1.1-1.9x the
  table lookups of spikes from 96 channels, at the stems' shapes.
* The weight gradient (:func:`conv3x3_weight_grad`): ``G^T [(A g A^T) . (B^T d B)] G`` summed over the tiles, the
  transpose of the forward. 2.7-4x oneDNN's; for spikes about the lookups' speed, better from 96 channels on maps of
  16x16 and more.

Results differ from the direct convolution by fp32 rounding (about 1e-5 of the output's scale, against 1e-6 for
the direct one). cuDNN picks the same algorithms for these shapes on GPUs. Only the fast path uses them. A
membrane within that rounding of the threshold can fire on one side and not on the other, so a fast model's
spikes, and through them its logits, can differ more from the exact path's than the listed and lookup products
(which only reorder fp32 sums) make them differ. ``SPIKEFORMER_WINOGRAD=0`` in the environment, or
:func:`disabled`, keeps the direct convolutions.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator, Optional

import torch

from . import bf16, build, linear, weights
from .build import ptr, threads

_vp, _i64, _ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
build.declare(
    sf_wino_input=(None, [_i64] * 6 + [_vp, _vp, _ci]),
    sf_wino_output=(None, [_i64] * 6 + [_vp, _vp, _vp, _ci]),
    sf_wino_grad_tiles=(None, [_i64] * 6 + [_vp, _vp, _ci]),
)

# The filter transform G of F(4x4, 3x3) (Lavin & Gray, 2016); B^T and A^T are written out in winograd.cpp.
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)
_GG = torch.kron(_G, _G).float()  # [36, 9]
CHUNK_BYTES = 4 << 20  # transformed gradient per chunk of tiles: the transform's output is read back from cache

# Where Winograd pays depends on the CPU: its GEMMs and the direct convolution it replaces (oneDNN's) run AVX512 code
# where the CPU has it, its transforms and the table lookups it competes with are this package's compiled code (the
# lookups with 16-lane vectors there, 8-lane ones on AVX2). The limits below were measured with
# ``python benchmarks/bench_winograd.py`` on an AMD EPYC Zen 3 (AVX2, ``"avx2"``), a Zen 5 (AVX512, ``"avx512"``) and an
# Intel Xeon (AVX512 and AMX, ``"avx512_intel"``), 2 threads, at the stems of Spikformer, SDT and QKFormer (batch 32,
# T=4) and the small shapes around the limits; whole training steps under two sets:
# python benchmarks/bench_rule_ab.py --rule winograd-limits --model NAME.
AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
KINDS = ("avx2", "avx512", "avx512_intel")


def cpu_kind() -> str:
    """This CPU's kind of limits: ``"avx2"`` without AVX512; with it, ``"avx512_intel"`` on Intel CPUs (MKL runs
    the 36 GEMMs with its AVX512 kernels there) and ``"avx512"`` elsewhere."""
    if not AVX512:
        return "avx2"
    return "avx512_intel" if build.cpu_vendor() == "GenuineIntel" else "avx512"


def limits(kind: str) -> dict:
    """The measured limits of this module (its upper-case names) for a kind of CPU (:data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown CPU kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "avx512_intel":
        # Intel Xeon with AMX, 2 threads: Winograd pays at every stem shape measured. Data gradient against oneDNN's
        # 1.3-2.8x, also at 48 -> 96 on 32x32 (1.41x) and on QKFormer's 16x16 to 4x4 stems (1.32-2.83x); small shapes
        # 1.0-1.7x. Forward of dense inputs 1.4-3.6x from 48 channels. Forward of spikes against the lookups 1.12-2.75x
        # from 48 channels (1.31x at 48 -> 96 on 32x32, 1.12x on 16x16). Weight gradient of spikes against the
        # lookups: 1.5-1.75x from 96 channels on 16x16 and 32x32 maps, 1.20x at 48 -> 96 on 32x32 but 0.76x on 16x16,
        # 0.96-1.48x on 8x8 maps.
        return dict(MIN_TILES=128, MIN_CHANNELS=48, FEW_TILES=0, FEW_TILES_MIN_CHANNELS=0, FWD_MIN_CHANNELS=48,
                    SPIKE_FWD_MIN_CHANNELS=48, SPIKE_WGRAD_MIN_CHANNELS=96)
    if kind == "avx512":
        # Data gradient against oneDNN's, Zen 5: 1.2-1.5x from 64 channels on 32x32 maps of 128 frames (8192 tiles)
        # and Spikformer's 192 -> 384 on 16x16 (2048 tiles) and 384 -> 384 on 8x8 (512 tiles); 0.79x at 48 -> 96 on
        # 32x32; 0.62-0.77x on QKFormer's stem (48 -> 96 16x16, 96 -> 192 8x8, 192 -> 384 4x4). Forward of dense
        # inputs: 0.74x at 48 -> 96 on 32x32, 1.13x at 64 -> 128. Forward of spikes against the lookups: 0.72x at
        # 96 -> 192 on 32x32 and 0.83x on 8x8, 1.07-1.7x from 128 channels. Weight gradient of spikes: the lookups
        # are faster at every shape measured (Winograd 0.40-0.84x of them).
        return dict(MIN_TILES=128, MIN_CHANNELS=64, FEW_TILES=2048, FEW_TILES_MIN_CHANNELS=384, FWD_MIN_CHANNELS=64,
                    SPIKE_FWD_MIN_CHANNELS=128, SPIKE_WGRAD_MIN_CHANNELS=1 << 30)
    # Data gradient, Zen 3: fewer than MIN_TILES 4x4 tiles per call (the 36 GEMMs too small: 0.9x at 32 tiles; 8
    # frames of a 4x4 map, 8 tiles: 0.4-0.6x), fewer than MIN_CHANNELS input or output channels (0.6x at 16, 0.7-0.9x at
    # 32, 1.5x at 64 on 8 frames of 16x16); 1.4-2.5x at the stems, 1.6x on QKFormer's 4x4 maps of 128 frames. Forward
    # against oneDNN's (dense inputs): 1.3-2.8x from 48 channels, 1.0x at 32, 0.86x on 4x4 maps of 16 frames (16
    # tiles) at 512 channels; against the lookups of spikes 1.1-1.9x from 96 channels on 4x4 to 32x32 maps, 0.75-1.48x
    # at 48 and 64. Weight gradient of spikes against the lookups: 1.1-1.2x from 96 channels on maps of 16x16 and
    # more, 0.73-1.0x on 4x4 to 8x8 maps or at 48 channels (against oneDNN's, for dense inputs, 2.7-4x wherever the
    # forward pays).
    return dict(MIN_TILES=128, MIN_CHANNELS=48, FEW_TILES=0, FEW_TILES_MIN_CHANNELS=0, FWD_MIN_CHANNELS=48,
                SPIKE_FWD_MIN_CHANNELS=96, SPIKE_WGRAD_MIN_CHANNELS=96)


# The data gradient keeps the direct convolution with fewer than MIN_TILES tiles per call, fewer than MIN_CHANNELS
# input or output channels, maps under MIN_SIDE pixels (a 2x2 map pads its 6x6 tile nine-fold), and, with fewer
# than FEW_TILES tiles, fewer than FEW_TILES_MIN_CHANNELS channels.
_rules = limits(cpu_kind())
MIN_TILES = _rules["MIN_TILES"]
MIN_CHANNELS = _rules["MIN_CHANNELS"]
FEW_TILES = _rules["FEW_TILES"]
FEW_TILES_MIN_CHANNELS = _rules["FEW_TILES_MIN_CHANNELS"]
MIN_SIDE = 4


_enabled = os.environ.get("SPIKEFORMER_WINOGRAD", "1").strip().lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether the fast path may use Winograd (``SPIKEFORMER_WINOGRAD`` is not ``0``; see :func:`disabled`)."""
    return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block the fast path runs no Winograd convolution (forward, data or weight gradient): only the
    direct ones, whose results differ from the exact path's by the order of fp32 sums alone."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved


def filter_transform(w: torch.Tensor) -> torch.Tensor:
    """``U [36, Cout, Cin]`` for a forward weight ``w [Cout, Cin, 3, 3]``: the transformed filters of the data
    gradient (``w`` flipped in space, input and output channels swapped), ``U[6a+b] = sum_kl G[a,k] G[b,l] w[kl]``
    as one product with the Kronecker square of ``G`` (fp32; within 1.2e-7 of float64)."""
    cout, cin = w.shape[:2]
    taps = w.detach().flip(2, 3).reshape(cout * cin, 9).t()  # [9, Cout*Cin]
    return (_GG @ taps).view(36, cout, cin)


def forward_filters(wt: torch.Tensor) -> torch.Tensor:
    """``U [36, Cin, Cout]`` of the forward convolution, from its weight in the ``[3, 3, Cin, Cout]`` layout
    (``weights.layout(w, torch.float32, "conv3x3")``): ``U[6a+b] = sum_kl G[a,k] G[b,l] w[kl]``, one product."""
    cin, cout = wt.shape[2:]
    return (_GG @ wt.reshape(9, cin * cout)).view(36, cin, cout)


def conv3x3_forward(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv2d(x, w, bias, padding=1)`` of channels-last fp32 frames ``x [N, Cin, H, W]`` by Winograd, for the
    transformed filters ``u = forward_filters(...)`` of ``w``; channels-last output. The caller checks
    :func:`forward_pays`."""
    N, _, H, W = x.shape
    out = torch.empty((N, u.shape[2], H, W), dtype=torch.float32, memory_format=torch.channels_last)
    return _tiles(x.contiguous(memory_format=torch.channels_last), u, bias, out)


def applies(N: int, H: int, W: int, w: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the Winograd data gradient serves ``N`` frames of ``H x W`` pixels with weight ``w`` (3x3) in
    ``dtype``: fp32, enough tiles, channels and pixels (see :data:`MIN_TILES`), the kernels built, :func:`enabled`."""
    if dtype != torch.float32 or w.dtype != torch.float32 or w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
        return False
    tiles, channels = N * ((H + 3) // 4) * ((W + 3) // 4), min(w.shape[0], w.shape[1])
    return (_enabled and tiles >= MIN_TILES and channels >= MIN_CHANNELS and min(H, W) >= MIN_SIDE
            and (tiles >= FEW_TILES or channels >= FEW_TILES_MIN_CHANNELS) and build.library() is not None)


# Where the forward convolution takes Winograd on the fast path (python benchmarks/bench_winograd.py --part forward):
# at least FWD_MIN_CHANNELS input and output channels (SPIKE_FWD_MIN_CHANNELS for 0/1 spikes, against the table
# lookups of kernels/cpu/lut.py), FWD_MIN_TILES tiles and FWD_MIN_SIDE pixels on a side (see :func:`limits`).
FWD_MIN_CHANNELS = _rules["FWD_MIN_CHANNELS"]
SPIKE_FWD_MIN_CHANNELS = _rules["SPIKE_FWD_MIN_CHANNELS"]
FWD_MIN_TILES = 64
FWD_MIN_SIDE = 4


def forward_pays(N: int, H: int, W: int, cin: int, cout: int, spikes: bool = False) -> bool:
    """Whether the forward convolution of ``N`` frames ``H x W``, ``cin -> cout`` channels takes Winograd (fp32,
    the kernels built, :func:`enabled`; see :data:`FWD_MIN_CHANNELS`); ``spikes``: of 0/1 spikes, against the table
    lookups (:data:`SPIKE_FWD_MIN_CHANNELS`)."""
    return (_enabled and min(cin, cout) >= (SPIKE_FWD_MIN_CHANNELS if spikes else FWD_MIN_CHANNELS)
            and min(H, W) >= FWD_MIN_SIDE and N * ((H + 3) // 4) * ((W + 3) // 4) >= FWD_MIN_TILES
            and build.library() is not None)


# Where Winograd's weight gradient replaces the lookups' for spikes (python benchmarks/bench_winograd.py --part
# weight; on AMD's AVX512 CPUs nowhere, see :func:`limits`)
SPIKE_WGRAD_MIN_CHANNELS = _rules["SPIKE_WGRAD_MIN_CHANNELS"]
SPIKE_WGRAD_MIN_SIDE = 16


def spike_weight_grad_pays(H: int, W: int, cin: int, cout: int) -> bool:
    """Whether a convolution of spikes whose forward takes Winograd also forms its weight gradient so, rather than
    by table lookups (see :data:`SPIKE_WGRAD_MIN_CHANNELS`)."""
    return min(cin, cout) >= SPIKE_WGRAD_MIN_CHANNELS and min(H, W) >= SPIKE_WGRAD_MIN_SIDE


def conv3x3_input_grad(g: torch.Tensor, shape: torch.Size, w: torch.Tensor) -> Optional[torch.Tensor]:
    """``dL/dx`` (channels-last ``shape`` ``[N, Cin, H, W]``, fp32) of a 3x3 convolution, stride 1, padding 1,
    weight ``w [Cout, Cin, 3, 3]``, for the output gradient ``g [N, Cout, H, W]``; ``None`` when it does not apply
    (see :func:`applies`)."""
    N, Cout, H, W = g.shape
    if not applies(N, H, W, w, g.dtype):
        return None
    dx = torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)
    return _tiles(g.contiguous(memory_format=torch.channels_last), filter_transform(w), None, dx)


def _chunk(P: int, channels: int) -> int:
    """Tiles per chunk: the transformed tiles of the widest side (``channels``) fill :data:`CHUNK_BYTES`."""
    return max(MIN_TILES, min(P, CHUNK_BYTES // (36 * 4 * channels)))


def _tiles(src: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``out [N, Cd, H, W]`` (channels-last) = the same-padded 3x3 correlation of ``src [N, Cs, H, W]``
    (channels-last) with the transformed filters ``u [36, Cs, Cd]``, plus ``bias [Cd]`` unless ``None``: input
    transforms, 36 GEMMs and output transforms over chunks of tiles that stay in cache."""
    lib = build.library()
    N, Cs, H, W = src.shape
    Cd = out.shape[1]
    P = N * ((H + 3) // 4) * ((W + 3) // 4)
    chunk = _chunk(P, max(Cs, Cd))
    v = torch.empty(36, chunk, Cs)
    m = torch.empty(36, chunk, Cd)
    nt = threads()
    b = None if bias is None else build.f32(bias)
    for p0 in range(0, P, chunk):
        n = min(chunk, P - p0)
        vv, mm = (v, m) if n == chunk else (torch.empty(36, n, Cs), torch.empty(36, n, Cd))
        lib.sf_wino_input(N, H, W, Cs, p0, n, ptr(src), ptr(vv), nt)
        linear.bmm_into(vv, u, mm)
        lib.sf_wino_output(N, H, W, Cd, p0, n, ptr(mm), None if b is None else ptr(b), ptr(out), nt)
    return out


def conv3x3_weight_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``dL/dW [Cout, Cin, 3, 3]`` of the 3x3 convolution (stride 1, padding 1) of channels-last fp32 frames
    ``x [N, Cin, H, W]``, for the output gradient ``g [N, Cout, H, W]`` (channels-last): per tile the 6x6 input
    transform ``B^T d B`` (the forward's) and the gradient's ``A g A^T``, 36 GEMMs summed over the tiles, and
    ``G^T M G`` back to 3x3 taps. 4x fewer multiply-adds than the direct weight gradient."""
    lib = build.library()
    N, Cin, H, W = x.shape
    Cout = g.shape[1]
    P = N * ((H + 3) // 4) * ((W + 3) // 4)
    chunk = _chunk(P, max(Cin, Cout))
    v = torch.empty(36, chunk, Cin)
    t = torch.empty(36, chunk, Cout)
    acc = torch.empty(36, Cin, Cout)
    nt = threads()
    for p0 in range(0, P, chunk):
        n = min(chunk, P - p0)
        vv, tt = (v, t) if n == chunk else (torch.empty(36, n, Cin), torch.empty(36, n, Cout))
        lib.sf_wino_input(N, H, W, Cin, p0, n, ptr(x), ptr(vv), nt)
        lib.sf_wino_grad_tiles(N, H, W, Cout, p0, n, ptr(g), ptr(tt), nt)
        if p0 == 0:
            torch.bmm(vv.transpose(1, 2), tt, out=acc)
        else:
            acc.baddbmm_(vv.transpose(1, 2), tt)
    taps = _GG.t() @ acc.view(36, Cin * Cout)  # [9, Cin * Cout]
    return taps.view(3, 3, Cin, Cout).permute(3, 2, 0, 1).contiguous()


def _dense_grads(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mask_x: bool, mask_w: bool, mask_b: bool):
    """oneDNN's ``(dL/dx, dL/dW, dL/db)`` of the plain convolution, each only if asked for."""
    return torch.ops.aten.convolution_backward(g, x, w, [w.shape[0]] if mask_b else None, [1, 1], [1, 1], [1, 1],
                                               False, [0, 0], 1, [mask_x, mask_w, mask_b])


class Conv3x3Winograd(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=1)`` (3x3, stride 1, fp32, channels-last ``x``) on the fast path: the
    forward by Winograd when the transformed filters ``u`` are given (:func:`forward_pays`), else oneDNN's.
    Backward: ``dL/dx`` by Winograd where :func:`applies`, ``dL/dW`` by Winograd where :func:`forward_pays`
    (2.7-4x oneDNN's weight gradient at the measured shapes), the rest by oneDNN as the plain convolution."""

    @staticmethod
    def forward(ctx, x, weight, bias, u):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if u is not None:
            return conv3x3_forward(x, u, bias)
        return torch.nn.functional.conv2d(x, weight, bias, padding=1)

    @staticmethod
    @bf16.autocast_free
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        N, Cin, H, W = x.shape
        g = g.contiguous(memory_format=torch.channels_last)
        gx = conv3x3_input_grad(g, x.shape, w) if ctx.needs_input_grad[0] else None
        need_w, need_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        mask_x = gx is None and ctx.needs_input_grad[0]
        gw = gb = None
        if need_w and forward_pays(N, H, W, Cin, w.shape[0]):
            gw = conv3x3_weight_grad(x.contiguous(memory_format=torch.channels_last), g)
            gb = g.sum((0, 2, 3)) if need_b else None
            need_w = need_b = False
        if need_w or need_b or mask_x:
            dx, gw_dense, gb_dense = _dense_grads(g, x, w, mask_x, need_w, need_b)
            gx = dx if mask_x else gx
            gw = gw_dense if need_w else gw
            gb = gb_dense if need_b else gb
        return gx, gw, gb, None


def same_padded_3x3(conv: torch.nn.Module) -> bool:
    """A plain ``nn.Conv2d`` 3x3, stride 1, zero padding 1, no dilation or groups: the convolution the compiled 3x3
    kernels (Winograd, listed nonzeros, table lookups) compute."""
    return (type(conv) is torch.nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def conv3x3(conv: torch.nn.Conv2d, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``conv(x)`` for channels-last fp32 frames ``x [N, C, H, W]`` on the fast path, by Winograd where it pays: the
    forward (:func:`forward_pays`) and, when ``x`` needs a gradient, the data gradient (:func:`applies`); ``None``
    when neither does (another convolution, too small a shape, autocast, ``torch.compile`` tracing)."""
    w = conv.weight
    if torch.compiler.is_compiling():  # a compiled graph keeps the plain convolution (no break on the C kernels)
        return None
    if not (same_padded_3x3(conv) and x.dim() == 4 and x.device.type == "cpu"
            and x.dtype == torch.float32 and w.dtype == torch.float32 and w.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and x.is_contiguous(memory_format=torch.channels_last)
            and (conv.bias is None or conv.bias.dtype == torch.float32)):
        return None
    N, _, H, W = x.shape
    fwd = forward_pays(N, H, W, w.shape[1], w.shape[0])
    if not fwd and not (torch.is_grad_enabled() and x.requires_grad and applies(N, H, W, w, x.dtype)):
        return None
    u = weights.layout(w, torch.float32, "winograd") if fwd else None
    return convolve(x, w, conv.bias, u)


def convolve(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             u: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` on the fast path: :class:`Conv3x3Winograd` where a gradient is to be
    formed, else the forward alone (by Winograd with the transformed filters ``u``; ``u`` is required then)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return Conv3x3Winograd.apply(x, weight, bias, u)
    return conv3x3_forward(x, u, bias)
