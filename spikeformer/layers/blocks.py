"""The blocks every family is built from: convolution / token projection, BatchNorm and a neuron.

Each block picks its own kernels from its modules' numerics (:mod:`spikeformer.layers.numerics`) and its input; no
model or engine sets a flag on it.

* :func:`conv_bn_neuron` / :func:`conv_bn` on frames ``[T, B, C, H, W]``. Exact: the convolution and BatchNorm2d on
  the merged ``[T*B, C, H, W]`` NCHW batch, as every official implementation. Fast: channels-last frames (oneDNN
  convolutions without layout reorders), a 3x3 convolution over the nonzero inputs when the input is spikes
  (``spikes_in=True``, :mod:`spikeformer.layers.sparse`), 1x1 convolutions as GEMMs on the channel-last view (over the
  nonzero inputs when they are spikes), and BatchNorm + neuron as one compiled kernel (:mod:`.fused_bn`).
* :func:`linear_bn_neuron` / :func:`linear_bn` on tokens ``[T, B, N, C]``. Exact: a :class:`TokenLinear` runs the
  official operation on the official layout (1x1 ``Conv1d`` on ``[T*B, C, N]`` and BatchNorm1d on its output, or
  ``nn.Linear`` and BatchNorm1d on the transposed view). Fast: a bias-free GEMM where BatchNorm absorbs the bias,
  products over nonzero spikes, BatchNorm + neuron fused.
* :class:`ConvBNNeuron` and :class:`LinearBNNeuron`: the same as modules (children ``conv``/``linear``, ``bn``,
  ``lif``), for new families.

Every fast kernel falls back by itself to the exact operations where it does not apply (another device or dtype,
hooks on a module, too many nonzero inputs, no compiler). Under bf16 autocast on a CPU without bf16 instructions a
block's convolution runs its fp32 kernels on the bf16-rounded frames and weights (``kernels/cpu/bf16.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_bn
from .fused_bn import _hooked, bn_neuron
from .linear import TokenLinear
from .norm import TokenBN
from .numerics import NumericsAware, wants_fast
from ..kernels.cpu import bf16, im2col, winograd
from .sparse import may_list, spike_conv3x3, spike_linear
from .time import seq_apply, shared_step, time_invariant


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Frames ``[T, B, C, H, W]`` with each frame channels-last (a copy only if they are not already)."""
    if x.dim() != 5:
        return x
    if time_invariant(x):  # a static batch repeated over T stays one batch, expanded (see conv_frames)
        return channels_last(shared_step(x).unsqueeze(0)).expand(x.shape)
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


def _is_channels_last_frames(x: torch.Tensor) -> bool:
    """Whether frames ``[T, B, C, H, W]`` are one contiguous block of channels-last frames: PyTorch's channels-last
    contiguity rule (dims of size 1 take any stride) over the order C, W, H, B, T, from the strides alone (indexing a
    frame to ask ``is_contiguous`` costs a view per call, a few microseconds on the small models' path)."""
    if x.dim() != 5:
        return False
    T, B, C, H, W = x.shape
    st = x.stride()
    expected = 1
    for size, stride in ((C, st[2]), (W, st[4]), (H, st[3]), (B, st[1]), (T, st[0])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _fast(x: torch.Tensor, *modules: nn.Module) -> bool:
    """Fast kernels apply when a numerics-aware module among ``modules`` is on fast numerics, or the input is in
    reduced precision. Plain ``nn`` modules carry no numerics: the family module calling a block passes ``fast``."""
    return any(wants_fast(m, x) for m in modules if isinstance(m, NumericsAware)) or (
        torch.is_autocast_enabled(x.device.type) or x.dtype in (torch.bfloat16, torch.float16))


# A convolution with a large weight (at least LARGE_WEIGHT elements) and fewer than MIN_CHANNELS_LAST_PIXELS output
# pixels per call (frames x height x width) keeps PyTorch's NCHW layout on the fast path too: channels-last, its
# weight and weight gradient are reordered at every step, a cost of the weight's size that the little arithmetic of
# a small map does not hide (ImageNet configurations on small inputs: SDT 8-768 and Spikeformer's tokenizer at B=4,
# T=2, 32x32, where 512-channel 3x3 convolutions see 2x2 maps, trained 7-13 % slower than exact before this).
MIN_CHANNELS_LAST_PIXELS = 512
LARGE_WEIGHT = 2 ** 18


def _out_pixels(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Output pixels of ``conv`` over frames ``x`` ``[T, B, C, H, W]`` per call (frames x height x width; the
    "same"-padded size, ceil(H / stride))."""
    h, w = x.shape[-2:]
    sh, sw = conv.stride
    return x.shape[0] * x.shape[1] * ((h + sh - 1) // sh) * ((w + sw - 1) // sw)


def _fp32_conv_frames(conv: nn.Module, x: torch.Tensor) -> bool:
    # fp32 products: fp32 frames outside autocast, or bf16 autocast where it is emulated (kernels/cpu/bf16.py); under
    # native bf16 autocast the weight is cast (copied) at every call anyway, and the fast kernels carry bf16
    return x.dim() == 5 and isinstance(conv, nn.Conv2d) and bf16.fp32_products(x)


def _small_map(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (_fp32_conv_frames(conv, x) and conv.weight.numel() >= LARGE_WEIGHT
            and _out_pixels(conv, x) < MIN_CHANNELS_LAST_PIXELS)


# A Conv-BN-neuron block whose output has fewer elements than this per call, on NCHW frames, runs the exact
# operations on the fast path too (fp32): below it the fixed per-call costs of the fast kernels (layout copies, the
# statistics and scale and shift of the fused BatchNorm + neuron kernel, listing nonzero spikes) outweigh what they
# save. Measured, one training step of a block, fast against exact (python benchmarks/bench_blocks.py): 0.79-0.97x
# at 8k-33k output elements, 0.88-1.33x at 131k, 1.1-1.9x above.
MIN_FAST_BLOCK_ELEMENTS = 2 ** 17


def small_nchw_block(conv: nn.Conv2d, x: torch.Tensor, max_elements: Optional[int] = None) -> bool:
    """Whether ``conv`` over fp32 frames ``x`` gives fewer than ``max_elements`` (default
    :data:`MIN_FAST_BLOCK_ELEMENTS`) output elements per call and ``x`` is NCHW (the input, or an exact block's
    output): there a Conv-BN-neuron block runs the exact operations on the fast path too. A block fed channels-last
    frames by a fast block keeps the fast path, where switching layouts back and forth costs more."""
    limit = MIN_FAST_BLOCK_ELEMENTS if max_elements is None else max_elements
    # the cheapest tests first: this runs on every call of every small block
    return (x.dim() == 5 and _out_pixels(conv, x) * conv.out_channels < limit and _fp32_conv_frames(conv, x)
            and not (x.shape[2] > 1 and _is_channels_last_frames(x)))


def conv_frames(conv: nn.Conv2d, x: torch.Tensor, fast: bool, spikes_in: bool = False) -> torch.Tensor:
    """``conv`` over frames ``[T, B, C, H, W]``; on the fast path channels-last, over nonzero spikes where that pays
    (small maps: NCHW, see :data:`MIN_CHANNELS_LAST_PIXELS`)."""
    if fast and time_invariant(x) and not _hooked(conv):
        # a static image repeated over T: one convolution of the batch, expanded over time (a hook sees every frame)
        return conv_frames(conv, shared_step(x).unsqueeze(0), fast, spikes_in).expand(x.shape[0], -1, -1, -1, -1)
    if type(conv) is nn.Conv2d and not _hooked(conv) and bf16.active(x):
        # bf16 products emulated on this CPU: this function's fp32 kernels on the bf16-rounded frames and weights
        return bf16.call_module(lambda c, xr: conv_frames(c, xr, fast, spikes_in), conv, x)
    if not fast:
        return seq_apply(conv, x)
    if _small_pointwise(conv, x):
        return _pointwise_frames(conv, channels_last(x), spikes_in)
    if _small_map(conv, x):
        return seq_apply(conv, x.contiguous())
    x = channels_last(x)
    if spikes_in and not _hooked(conv):
        if conv.kernel_size == (3, 3):
            out = spike_conv3x3(conv, x.flatten(0, 1))
            if out is not None:
                return channels_last(out.unflatten(0, x.shape[:2]))
        elif _pointwise(conv) and x.device.type == "cpu":
            out = _listed_pointwise(conv, x)
            if out is not None:
                return out
    if not _hooked(conv) and im2col.supports(conv, x.flatten(0, 1)):  # bf16 on AMX, small maps
        return channels_last(im2col.conv3x3(conv, x.flatten(0, 1)).unflatten(0, x.shape[:2]))
    if not _hooked(conv):
        out = winograd.conv3x3(conv, x.flatten(0, 1))  # a dense input's gradient: Winograd, where it pays
        if out is not None:
            return channels_last(out.unflatten(0, x.shape[:2]))
    y = seq_apply(conv, x)
    # a 1-channel input is both NCHW- and channels-last-contiguous, and oneDNN then returns NCHW: fix the layout once
    return channels_last(y)


# A 1x1 convolution over frames of at most this many pixels in all (T x B x H x W) runs on the fast path as one GEMM
# over the channel-last view of its channels-last frames, ``F.linear`` with the kernel seen as ``[out, in]``: oneDNN's
# convolution primitive has a fixed cost per call (weight reorders, a few hundred microseconds) that so few rows do not
# amortise. One training step of the convolution, forward and backward (python benchmarks/bench_blocks.py --pointwise
# [--bf16]): fp32 2.1-2.2x at 32 rows (SDT 8-384's blocks at batch 4, T=2, 32x32: 384 -> 384 on 2x2 maps), 1.1-1.5x
# at 128-512, 1.07x at 1024, 0.96-1.13x at 2048-8192, 0.86x at 131072 rows of 64 channels; bf16 1.2-2.2x up to 1024
# rows, 0.97-1.08x at 4096-8192. Spikes take the products over their nonzeros first where those apply (spikes_in).
# Graphs traced by torch.compile keep the convolution (the compiler chooses its own lowering of it).
POINTWISE_GEMM_MAX_ROWS = 1024


def _small_pointwise(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv`` over frames ``x [T, B, C, H, W]`` may run as one GEMM over the pixels (on CPU, no hooks, not
    traced): a 1x1 convolution of at most :data:`POINTWISE_GEMM_MAX_ROWS` pixels in all, or a 'same' convolution on
    1x1 maps (:func:`_centre_tap_only`) at any number of frames."""
    return (type(conv) is nn.Conv2d and x.dim() == 5
            and ((x.shape[0] * x.shape[1] * x.shape[3] * x.shape[4] <= POINTWISE_GEMM_MAX_ROWS and _pointwise(conv))
                 or (x.shape[3] == 1 and x.shape[4] == 1 and _centre_tap_only(conv)))
            and x.device.type == "cpu" and not _hooked(conv) and not torch.compiler.is_compiling())


# A stride-1, zero-padded 'same' convolution (odd kernel, padding half of it) of a 1x1 map: every tap but the centre
# sees only padding, so the convolution is the product of the pixel by the centre tap, exactly (up to the order of
# the sums), and its weight gradient is zero off the centre. oneDNN runs the whole kernel: MA-SNN ResNet-104's last
# stage on 32x32 inputs (3x3, 512 -> 512 on 1x1 maps, 15 calls a step) spent 13 ms forward and 154 ms backward of a
# 420 ms training step there (batch 4, T=2).
def _centre_tap_only(conv: nn.Conv2d) -> bool:
    kh, kw = conv.kernel_size
    return (kh % 2 == 1 and kw % 2 == 1 and conv.padding == (kh // 2, kw // 2) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


class _CentreTap(torch.autograd.Function):
    """``x [N, C_in] @ W[:, :, c, c]^T + b`` for a 'same' convolution's weight ``W`` and its centre tap ``c``; the
    weight gradient is the centre tap's product, zero elsewhere. Under bf16 autocast the operands are cast as
    autocast casts a Linear's (bf16 products, the gradients back in the inputs' and parameters' dtypes)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        kh, kw = weight.shape[-2:]
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        wc = weight[:, :, kh // 2, kw // 2].to(dtype).contiguous()  # [out, in]: one gather a step, kept for backward
        xc = x.to(dtype)
        with torch.autocast("cpu", enabled=False):
            y = F.linear(xc, wc, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(xc, wc)
        ctx.meta = (x.dtype, weight.dtype, weight.shape, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, g):
        xc, wc = ctx.saved_tensors
        x_dtype, w_dtype, w_shape, b_dtype = ctx.meta
        g = g.to(wc.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.mm(g, wc).to(x_dtype)
        if ctx.needs_input_grad[1]:
            gw = g.new_zeros(w_shape, dtype=w_dtype)
            gw[:, :, w_shape[-2] // 2, w_shape[-1] // 2] = torch.mm(g.t(), xc)
        if ctx.needs_input_grad[2]:
            gb = g.sum(0).to(b_dtype)  # in the compute dtype, as the bias of an autocast Linear
        return gx, gw, gb


def _pixel_frames(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The product of a convolution :func:`_small_pointwise` admits (``weight`` its kernel) on frames ``x``:
    :func:`_linear_frames` for a 1x1 kernel, the centre tap (:class:`_CentreTap`) on 1x1 maps; channels-last frames
    out."""
    if weight.shape[-2:] == (1, 1):
        return _linear_frames(x, weight.flatten(1), bias)
    T, B, C = x.shape[:3]
    y = _CentreTap.apply(x.reshape(T * B, C), weight, bias)  # 1x1 maps: [T, B, C, 1, 1] is a [T * B, C] view
    return y.view(T, B, 1, 1, -1).permute(0, 1, 4, 2, 3)


def _linear_frames(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 convolution's product ``weight [out, in]`` on the ``[T, B, H, W, C]`` view of frames ``x``; returns
    channels-last frames (a permuted view of the product's output: no copy)."""
    return F.linear(x.permute(0, 1, 3, 4, 2), weight, bias).permute(0, 1, 4, 2, 3)


def _listed_pointwise(conv: nn.Conv2d, x: torch.Tensor) -> Optional[torch.Tensor]:
    """A 1x1 convolution of channels-last spike frames ``x`` over their nonzeros (:func:`spike_linear` on the
    contiguous ``[T, B, H, W, C]`` view), channels-last frames out; ``None`` where listing does not apply."""
    out = spike_linear(_LinearView(conv), x.permute(0, 1, 3, 4, 2))
    return None if out is None else out.permute(0, 1, 4, 2, 3)


def _pointwise_frames(conv: nn.Conv2d, x: torch.Tensor, spikes_in: bool) -> torch.Tensor:
    """A 1x1 convolution of channels-last frames ``x [T, B, C, H, W]``: over the nonzero inputs where ``spikes_in``
    and that applies, else one GEMM (:func:`_linear_frames`); a 'same' convolution on 1x1 maps: its centre tap's
    GEMM."""
    out = _listed_pointwise(conv, x) if spikes_in and _pointwise(conv) else None
    return _pixel_frames(x, conv.weight, conv.bias) if out is None else out


def pointwise_gemm(conv: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``conv(x)`` for a 1x1 convolution over frames ``x [T, B, C, H, W]`` of at most
    :data:`POINTWISE_GEMM_MAX_ROWS` pixels in all, or a 'same' convolution on 1x1 maps (its centre tap), as one GEMM
    in ``x``'s layout (channels-last frames give channels-last frames without a copy; NCHW frames are copied to and from the channel-last view, which costs less
    than the convolution's fixed overhead at these sizes); ``None`` where that does not apply (another kernel, more
    pixels, hooks, another device, a traced graph). For blocks on the fast numerics that run the exact operations by
    their own size or layout rules (:func:`conv_bn` ``gemm=True``, :func:`conv_bn_neuron`). Emulated bf16 autocast
    (``kernels/cpu/bf16.py``): the fp32 GEMM on the bf16-rounded operands, as the blocks' convolutions there."""
    if not _small_pointwise(conv, x):
        return None
    layout = _is_channels_last_frames(x)

    def gemm(xs: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        y = _pixel_frames(xs, weight, bias)
        return y if layout else y.contiguous()

    if bf16.active(x):
        return bf16.call(gemm, x, conv.weight, conv.bias)
    return gemm(x, conv.weight, conv.bias)


def module_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` for a convolution or Linear a family calls directly; under bf16 autocast where bf16 products are
    emulated (``kernels/cpu/bf16.py``) and nothing hooks ``m``, its fp32 forward on the bf16-rounded input and
    parameters, the result in bf16."""
    if bf16.active(x) and not _hooked(m):
        return bf16.call_module(lambda c, xr: c(xr), m, x)
    return m(x)


def _pointwise(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
            and conv.dilation == (1, 1) and conv.groups == 1)


class _LinearView:
    """A 1x1 convolution's parameters seen as a Linear's (``weight [out, in]``), without copying."""

    def __init__(self, conv: nn.Conv2d):
        self.weight = conv.weight.flatten(1)
        self.bias = conv.bias
        self.in_features, self.out_features = conv.in_channels, conv.out_channels


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor, spikes_in: bool = False,
            fast: Optional[bool] = None, gemm: bool = False) -> torch.Tensor:
    """``bn(conv(x))`` on frames ``[T, B, C, H, W]`` (BatchNorm over the merged T*B batch). ``gemm=True`` with
    ``fast=False``: a block on the fast numerics that runs the exact operations (its own size or layout rule) still
    runs a small 1x1 convolution as one GEMM (:func:`pointwise_gemm`)."""
    fast = _fast(x, conv, bn) if fast is None else fast
    if gemm and not fast:
        z = pointwise_gemm(conv, x)
        if z is not None:
            return seq_apply(bn, z)
    return frames_bn(bn, conv_frames(conv, x, fast, spikes_in), fast)


def frames_bn(bn: nn.Module, z: torch.Tensor, fast: bool) -> torch.Tensor:
    """``bn`` over frames ``[T, B, C, H, W]`` (the merged T*B batch): on the fast path
    :func:`~spikeformer.layers.fused_bn.bn_frames` (once per batch for frames repeated over time, the backward given
    the gradient in the frames' memory format), else the official ``seq_apply``."""
    return fused_bn.bn_frames(bn, z) if fast else seq_apply(bn, z)


def conv_bn_neuron(conv: nn.Conv2d, bn: nn.Module, neuron: nn.Module, x: torch.Tensor, spikes_in: bool = False,
                   fast: Optional[bool] = None, spikes_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``neuron(bn(conv(x)))`` on frames ``[T, B, C, H, W]``; see the module docstring for the two paths.
    ``spikes_dtype``: see :func:`~spikeformer.layers.fused_bn.bn_neuron`."""
    fast = _fast(x, conv, bn, neuron) if fast is None else fast
    if fast and small_nchw_block(conv, x):
        z = pointwise_gemm(conv, x)  # the exact operations, but a small 1x1 convolution as one GEMM
        if z is not None:
            return bn_neuron(bn, neuron, z, fuse=False, spikes_dtype=spikes_dtype)
        fast = False
    z = conv_frames(conv, x, fast, spikes_in)
    return bn_neuron(bn, neuron, z, fuse=fast, spikes_dtype=spikes_dtype)


def _exact_official(linear: nn.Module, x: torch.Tensor) -> bool:
    return (isinstance(linear, TokenLinear) and not linear.fast and linear.official_op != "linear"
            and x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type))


def _official_channel_first(linear: TokenLinear, x: torch.Tensor, grid: Optional[tuple[int, int]]):
    """Tokens ``[T, B, N, C]`` -> the official conv's contiguous input ``[T*B, C, N]`` (or ``[T*B, C, H, W]``)."""
    T, B, N, C = x.shape
    cf = x.reshape(T * B, N, C).transpose(1, 2).contiguous()
    if linear.official_op == "conv2d":
        if grid is None:
            raise ValueError("a conv2d token projection needs the token grid (H, W) on the exact path")
        cf = cf.view(T * B, C, *grid)
    return cf


def _official_linear_bn(linear: TokenLinear, bn: nn.Module, x: torch.Tensor, grid) -> torch.Tensor:
    """The official convolution and BatchNorm on ``[T*B, C, N]`` (or ``[T*B, C, H, W]``), returned as ``[T, B, C', N]``."""
    T, B, N, _ = x.shape
    y = bn_channel_first(bn, linear.official(_official_channel_first(linear, x, grid)))
    return y.reshape(T, B, linear.out_features, N)


def linear_bn(linear: nn.Module, bn: nn.Module, x: torch.Tensor, grid: Optional[tuple[int, int]] = None,
              sparse: bool = False) -> torch.Tensor:
    """``bn(linear(x))`` on tokens ``[T, B, N, C]``."""
    if _exact_official(linear, x) and x.dim() == 4:
        return _official_linear_bn(linear, bn, x, grid).transpose(-1, -2)
    z = spike_linear(linear, x) if sparse and _fast(x, linear, bn) and not _hooked(linear) else None
    return bn(linear(x) if z is None else z)


def bn_channel_first(bn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """BatchNorm on a channel-first tensor ``[M, C, ...]`` with PyTorch's plain kernel, as the official code calls it
    (TokenBN holds the parameters and buffers of ``nn.BatchNorm1d``, which an official BatchNorm2d also has)."""
    if not isinstance(bn, TokenBN):
        return bn(y)
    # nn.modules.batchnorm._BatchNorm.forward, without the rank check of BatchNorm1d
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return F.batch_norm(y, bn.running_mean if keep else None, bn.running_var if keep else None, bn.weight, bn.bias,
                        batch_stats, factor, bn.eps)


def linear_bn_neuron(linear: nn.Module, bn: nn.Module, neuron: nn.Module, x: torch.Tensor, sparse: bool = False,
                     grid: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """``neuron(bn(linear(x)))`` on tokens ``[T, B, N, C]``. ``sparse=True`` says ``x`` is spikes (a neuron's
    output) or a sum of a few spike tensors (a residual stream of spikes), so the fast path may run the product over
    the nonzero inputs where they are few enough to pay (:func:`spikeformer.layers.sparse.max_density`); ``grid`` is the token grid ``(H, W)``,
    needed where the official code projects with a 1x1 ``Conv2d``."""
    if _exact_official(linear, x) and x.dim() == 4:
        return neuron(_official_linear_bn(linear, bn, x, grid)).transpose(-1, -2)
    return fused_bn.linear_bn_neuron(linear, bn, neuron, x, fuse=True if _fast(x, linear, bn) else False,
                                     sparse=sparse)


def linear_bn_neurons(branches, x: torch.Tensor, sparse: bool = False, grid: Optional[tuple[int, int]] = None,
                      keep_input: bool = False) -> list:
    """:func:`linear_bn_neuron` for several ``(linear, bn, neuron)`` branches reading the same tokens ``x`` (q, k and
    v of an attention block). With ``keep_input`` the list ends with ``x`` itself, or an alias of it whose gradient
    the branches' products take in: add the residual branch to that last entry, not to ``x``
    (``x = outs[-1] + branch(outs)``). On the fast path under bf16 autocast the branches run as one autograd
    Function (:func:`spikeformer.layers.fused_bn.linear_bn_neurons`) where their products are dense (``sparse``
    inputs too dense to list); elsewhere one by one."""
    if (_fast(x, *(m for b in branches for m in b[:2])) and x.dim() >= 2
            and not (sparse and may_list(x, branches[0][0].weight))
            and not any(_exact_official(linear, x) for linear, _, _ in branches)):
        out = fused_bn.linear_bn_neurons(branches, x, keep_input)
        if out is not None:
            return out
    outs = [linear_bn_neuron(linear, bn, neuron, x, sparse, grid) for linear, bn, neuron in branches]
    return outs + ([x] if keep_input else [])


def add_residual(module: nn.Module, x: torch.Tensor, grid, branch) -> torch.Tensor:
    """``x + module(x, grid)`` for a module whose ``branch(x, grid, keep_input=True)`` returns ``(kept, out)``, ``kept``
    being the last entry of :func:`linear_bn_neurons` with ``keep_input`` (``x`` or its alias) and ``out`` the
    module's output: the sum is taken on ``kept``. A module with hooks is called as usual, so that they see its
    call."""
    if _hooked(module):
        return x + module(x, grid)
    kept, out = branch(x, grid, keep_input=True)
    return kept + out


class ConvBNNeuron(NumericsAware, nn.Module):
    """Conv2d -> BatchNorm2d -> neuron on frames ``[T, B, C, H, W]`` (``neuron=None``: no neuron)."""

    def __init__(self, in_chans: int, out_chans: int, neuron=None, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, bias: bool = False, spikes_in: bool = False, groups: int = 1):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, bias=bias, groups=groups)
        self.bn = nn.BatchNorm2d(out_chans)
        self.lif = neuron() if neuron is not None else None
        self.spikes_in = spikes_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        if self.lif is None:
            return conv_bn(self.conv, self.bn, x, self.spikes_in, fast)
        return conv_bn_neuron(self.conv, self.bn, self.lif, x, self.spikes_in, fast)


class LinearBNNeuron(NumericsAware, nn.Module):
    """TokenLinear -> TokenBN -> neuron on tokens ``[T, B, N, C]`` (``neuron=None``: no neuron)."""

    def __init__(self, in_features: int, out_features: int, neuron=None, bias: bool = True,
                 official_op: str = "linear", spikes_in: bool = False):
        super().__init__()
        self.linear = TokenLinear(in_features, out_features, bias=bias, official_op=official_op)
        self.bn = TokenBN(out_features, transposed=official_op == "linear")
        self.lif = neuron() if neuron is not None else None
        self.spikes_in = spikes_in

    def forward(self, x: torch.Tensor, grid: Optional[tuple[int, int]] = None) -> torch.Tensor:
        if self.lif is None:
            return linear_bn(self.linear, self.bn, x, grid, self.spikes_in)
        return linear_bn_neuron(self.linear, self.bn, self.lif, x, self.spikes_in, grid)
