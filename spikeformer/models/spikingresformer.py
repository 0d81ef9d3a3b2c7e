"""SpikingResformer: "SpikingResformer: Bridging ResNet and Vision Transformer in Spiking Neural Networks"
(Shi, Hao, Yu, CVPR 2024).

Faithful to the official code (xyshi2000/SpikingResformer, ``models/spikingresformer.py``):

* **stem** (``prologue``): conv7x7/2 - BN - maxpool3x3/2 on ImageNet (224 -> 56, no neuron); conv3x3/1 - BN on the
  CIFAR and DVS-Gesture variants.
* **three stages**; stage i > 0 starts with a ``DownsampleLayer`` (SN - conv3x3/2 - BN, no residual). Each stage
  stacks {1, 2, 3} Spiking Resformer blocks = MHDSSA + GWSFFN, both with residuals that add BN outputs.
* **DSSA** (paper Eq. 10-14): Dual Spike Self-Attention. ``f(X) = BN(Conv_p(X))`` makes 2C channels per patch;
  per head, ``AttnMap = SN(f1(X)^T X * c1)`` and ``SN(f2(X) AttnMap * c2)``, then ``BN(Conv1x1(.))``. The scales
  ``c1 = 1/sqrt(r_x * d)`` and ``c2 = 1/sqrt(r_attn * L)`` use per-head firing rates ``r`` kept as the buffers
  ``firing_rate_x`` / ``firing_rate_attn`` (in the state_dict): set from the first training batch, then an EMA
  with momentum 0.999, updated only in training mode. ``L = (img_size / 4 / 2**stage / p)**2`` is fixed at
  construction from ``img_size``, as in the official code (build with ``img_size=288`` to evaluate at 288).
* **GWSFFN** (Eq. 16-18): ``SN-Conv1x1(C->4C)-BN``, ``SN-GroupConv3x3(groups of 64 channels)-BN + residual``,
  ``SN-Conv1x1(4C->C)-BN``.
* **head**: global average pool, then ``Linear(C, classes, bias=False)`` on every time step. The official
  training loss and accuracy use the mean over T of these logits (``CriterionWarpper`` without TET, which every
  official config uses); :meth:`SpikingResformer.forward` returns that mean ``[B, classes]`` and
  :meth:`SpikingResformer.forward_per_step` the per-step logits ``[T, B, classes]`` (what TET needs).

Neurons: SpikingJelly 0.0.0.0.14 ``LIFNode`` defaults (tau 2, hard reset to 0, threshold 1, ``detach_reset=True``,
``surrogate.ATan(alpha=2)``); the DVS-Gesture model uses the parametric LIF (``w`` in the state_dict).

Numerics (:mod:`spikeformer.layers.numerics`): every ``SN -> conv -> BN`` runs through the shared block
:func:`~spikeformer.layers.blocks.conv_bn`. ``numerics="exact"`` folds time into the batch and runs each
convolution and BatchNorm2d on the merged NCHW ``[T*B, C, H, W]`` batch, as SpikingJelly's ``seq_to_ann_forward``
does, and the DSSA products as the official ``torch.matmul`` on the same views: the official logits bit for bit
(``tests/models/test_spikingresformer.py``, one thread). ``"fast"`` keeps the frames of a block channels-last
where its maps have at least as many pixels as its widest convolution has channels (NCHW in late stages with
small maps and many channels, where oneDNN's per-call weight reorders cost more than the layout saves), runs the
DSSA products on views of those frames, and takes 1x1 convolutions over the nonzero spikes where very few fire;
the neurons are the compiled multi-step kernels in both. No BatchNorm here feeds a neuron alone (each BN output
is also a residual), so nothing fuses BatchNorm with a neuron, and the grouped 3x3 convolutions have no sparse
kernel.

Deviations, none of which changes a result the official code computes: time is folded into the batch by the
shared blocks instead of SpikingJelly's ``step_mode='m'`` layers, the BN wrapper level (``norm.bn.weight``) is gone
(``norm.weight``; :func:`checkpoint_filter_fn` maps it), frame input is ``[T, B, C, H, W]`` (the official forward
takes ``[B, T, C, H, W]``), DVS models append the polarity-sum channel themselves when given 2-channel frames
(the official ``DVStransform`` does it in the data pipeline), and in eval mode a DSSA whose firing-rate buffers were
never set (all zero: a fresh, untrained model) uses the batch's firing rate instead of dividing by zero, and a
head whose firing rate is exactly 0 gets scale 0 instead of the official ``1/0`` (which makes every output NaN).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import NumericsAware, expand_time, seq_apply, wants_fast
from ..kernels.cpu import bf16
from ..layers.blocks import channels_last, conv_bn
from ..neurons import ATan, neuron_factory
from ._base import SpikingClassifier
from .registry import IMAGENET_MEAN, IMAGENET_STD, cfg, register_model

# SpikingJelly 0.0.0.0.14 LIFNode as the official `LIF` wrapper builds it (models/submodules/layers.py).
LIF_DEFAULTS = dict(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, detach_reset=True, surrogate=ATan(2.0))

# The official CIFAR loaders normalise with these (note the std differs from the usual CIFAR-10 std).
OFFICIAL_CIFAR_MEAN, OFFICIAL_CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class Prologue(NumericsAware, nn.Sequential):
    """The stem: ``conv -> BN [-> maxpool]`` on frames ``[T, B, C, H, W]`` (children ``0``, ``1``, ``2`` as the
    official ``nn.Sequential``). Its input is pixels or event counts, not spikes."""

    def __init__(self, in_chans: int, dim: int, imagenet: bool):
        if imagenet:
            super().__init__(nn.Conv2d(in_chans, dim, 7, 2, 3, bias=False), nn.BatchNorm2d(dim), nn.MaxPool2d(3, 2, 1))
        else:
            super().__init__(nn.Conv2d(in_chans, dim, 3, 1, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn(self[0], self[1], x, fast=wants_fast(self, x))
        return seq_apply(self[2], x) if len(self) > 2 else x


# Below this fraction of nonzero fp32 spikes a 1x1 convolution over the nonzeros beats oneDNN's dense one (forward
# plus backward; on an AVX2 CPU without bf16 arithmetic the crossover is 2-3 %, where the kernels' own bound, set
# for bf16, is 8 %). SpikingResformer's convolutions see 3-13 % at initialisation, so the dense kernels mostly win.
_FP32_SPARSE_DENSITY = 0.025


def _sparse_pays(conv: nn.Conv2d, s: torch.Tensor) -> bool:
    """Whether to offer the spikes ``s`` to the sparse kernels (which apply their own bound as well): only 1x1
    convolutions have one here (the 3x3 ones are grouped or strided)."""
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
        return False
    if not bf16.fp32_products(s):  # (emulated bf16 autocast has fp32 products: kernels/cpu/bf16.py)
        return True
    return int(torch.count_nonzero(s)) <= _FP32_SPARSE_DENSITY * s.numel()


def _conv_bn_spikes(conv: nn.Conv2d, bn: nn.BatchNorm2d, s: torch.Tensor, fast: bool,
                    gemm: bool = False) -> torch.Tensor:
    """``bn(conv(s))`` for spikes ``s``: over the nonzero spikes on the fast path where that pays. ``gemm``: a block
    on the fast numerics that keeps NCHW frames (``fast`` False, see :func:`_block_frames`) may run a small 1x1
    convolution as one GEMM (:func:`~spikeformer.layers.blocks.pointwise_gemm`), BatchNorm as the exact path."""
    return conv_bn(conv, bn, s, spikes_in=fast and _sparse_pays(conv, s), fast=fast, gemm=gemm)


class SNConvBN(NumericsAware, nn.Sequential):
    """``SN -> conv -> BN`` (the official ``nn.Sequential(activation(), Conv, BN)``, children ``0``, ``1``, ``2``):
    the convolution's input is the neuron's spikes."""

    def __init__(self, neuron: nn.Module, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__(neuron, conv, bn)

    def forward(self, x: torch.Tensor, fast: Optional[bool] = None, gemm: bool = False) -> torch.Tensor:
        """``fast``: the path its block chose (default: this module's numerics); ``gemm``: see
        :func:`_conv_bn_spikes`."""
        return _conv_bn_spikes(self[1], self[2], self[0](x), wants_fast(self, x) if fast is None else fast, gemm)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and not x.is_contiguous() and x.permute(0, 1, 3, 4, 2).is_contiguous()


class _Relayout(torch.autograd.Function):
    """Frames in another memory layout (channels-last or NCHW), whose gradient goes back in the input's layout: a
    BatchNorm backward given a gradient in another layout than its input is several times slower."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, to_channels_last: bool) -> torch.Tensor:
        ctx.back_to_channels_last = _is_channels_last(x)
        y = channels_last(x) if to_channels_last else x.contiguous()
        return x.view_as(x) if y is x else y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return (channels_last(g) if ctx.back_to_channels_last else g.contiguous()), None


# Under bf16 autocast on a CPU with bf16 instructions (oneDNN's bf16 convolutions) channels-last pays on smaller maps:
# there a map counts as this many times its pixels against the channels. Measured on an AMD EPYC Zen 5 (AVX512-BF16,
# 2 threads): the grouped 3x3 convolution of the MLP (64 channels per group, 128 frames) forward and backward, 768
# channels on 16x16 maps, 149 ms channels-last against 257 ms NCHW, 1536 channels on 8x8 70 ms either way; a
# spikingresformer_cifar bf16 training step (batch 32, T=4) 2.075 against 2.20 s and 2.128 against 2.26 s in two
# runs, one process, the two rules alternating (spikingresformer_dvsg: 0.938 against 0.949 s;
# python benchmarks/bench_rule_ab.py --rule spikingresformer-bf16-layout --model spikingresformer_cifar --bf16)
_BF16_PIXEL_WEIGHT = 4


def _block_frames(block: nn.Module, x: torch.Tensor, channels: int) -> tuple[torch.Tensor, bool, bool]:
    """``(x, fast, gemm)`` for a block whose widest convolution has ``channels`` output channels. Fast numerics keep the
    frames channels-last where the maps have at least as many pixels as that; oneDNN reorders a channels-last
    convolution's weight and weight gradient at every call, which costs more than the layout saves once the
    weights outweigh the feature maps (on an AVX2 CPU: 512 channels on 7x7 maps, 1536 on 8x8), and there the
    block runs the NCHW path (under native bf16 autocast from a quarter of those pixels: :data:`_BF16_PIXEL_WEIGHT`).
    The third value says the block is on the fast numerics but keeps NCHW frames: its small 1x1 convolutions may run
    as GEMMs there (:func:`_conv_bn_spikes`)."""
    pixels = x.shape[-2] * x.shape[-1] * (_BF16_PIXEL_WEIGHT if bf16.native_autocast(x) else 1)
    wanted = wants_fast(block, x)
    fast = wanted and pixels >= channels
    if fast != _is_channels_last(x) and (fast or not x.is_contiguous()):
        x = _Relayout.apply(x, fast)
    return x, fast, wanted and not fast


def _inv_sqrt(r: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(r)``, and 0 where a head's firing rate is 0: that head's spikes are all zero then, and the
    official ``0 * inf`` would turn the whole network's output (and gradients) into NaN."""
    s = 1.0 / torch.sqrt(r)
    return torch.where(r > 0, s, torch.zeros_like(s))


class DSSA(NumericsAware, nn.Module):
    """Multi-head Dual Spike Self-Attention with its residual: ``x + BN(Conv1x1(DSSA(SN(x))))`` (Eq. 12-15)."""

    momentum = 0.999

    def __init__(self, dim: int, num_heads: int, lenth: int, patch_size: int, neuron):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.lenth = dim, num_heads, lenth
        self.register_buffer("firing_rate_x", torch.zeros(1, 1, num_heads, 1, 1))
        self.register_buffer("firing_rate_attn", torch.zeros(1, 1, num_heads, 1, 1))
        # Python flags, not state: like the official code, a buffer that is still all zero when training starts
        # is initialised from the first batch; a loaded (non-zero) buffer is only EMA-updated.
        self._started = {"firing_rate_x": False, "firing_rate_attn": False}
        self.activation_in = neuron()
        self.W = nn.Conv2d(dim, dim * 2, patch_size, patch_size, bias=False)
        self.norm = nn.BatchNorm2d(dim * 2)
        self.activation_attn = neuron()
        self.activation_out = neuron()
        self.Wproj = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm_proj = nn.BatchNorm2d(dim)

    def _firing_rate(self, name: str, spikes: torch.Tensor) -> torch.Tensor:
        """The per-head firing rate ``[1, 1, h, 1, 1]`` used for scaling (EMA buffer, updated in training)."""
        buf = getattr(self, name)
        if self.training:
            rate = spikes.detach().mean((0, 1, 3, 4), keepdim=True)
            with torch.no_grad():
                if not self._started[name] and torch.all(buf == 0):
                    buf.copy_(rate)
                self._started[name] = True
                buf.copy_(buf * self.momentum + rate * (1 - self.momentum))
            return buf.clone()
        if not bool(buf.any()):  # never trained nor loaded: the official code would divide by zero here
            return spikes.detach().mean((0, 1, 3, 4), keepdim=True)
        return buf

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, B, C, H, W]
        T, B, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        x, fast, gemm = _block_frames(self, x, 2 * C)
        shortcut = x
        x = self.activation_in(x)
        y = _conv_bn_spikes(self.W, self.norm, x, fast, gemm)  # [T, B, 2C, H/p, W/p]
        if fast:
            # The heads as views of channels-last frames ([T, B, pixels, channels] in memory): the gradients of
            # y and x then come back channels-last too, where BatchNorm's backward is fast (mixed layouts are not)
            yt = y.permute(0, 1, 3, 4, 2).reshape(T, B, -1, h, 2 * d).transpose(2, 3)  # [T, B, h, L, 2d]
            y1t, y2 = yt[..., :d], yt[..., d:].transpose(-1, -2)
            x = x.permute(0, 1, 3, 4, 2).reshape(T, B, H * W, h, d).permute(0, 1, 3, 4, 2)  # [T, B, h, d, HW]
        else:
            y = y.reshape(T, B, h, 2 * d, -1)  # [T, B, h, 2d, L]
            y1t, y2 = y[:, :, :, :d, :].transpose(-1, -2), y[:, :, :, d:, :]
            x = x.reshape(T, B, h, d, -1)  # [T, B, h, d, HW]

        scale1 = _inv_sqrt(self._firing_rate("firing_rate_x", x) * (self.dim // self.num_heads))
        attn = self.activation_attn(bf16.matmul(y1t, x) * scale1)  # [T, B, h, L, HW]
        scale2 = _inv_sqrt(self._firing_rate("firing_rate_attn", attn) * self.lenth)
        if fast:  # (y2 attn)^T = attn^T y2^T: [T, B, h, HW, d], then channels-last frames
            out = bf16.matmul(attn.transpose(-1, -2), y2.transpose(-1, -2)) * scale2
            out = out.transpose(2, 3).reshape(T, B, H, W, C).permute(0, 1, 4, 2, 3)
        else:
            out = (bf16.matmul(y2, attn) * scale2).reshape(T, B, C, H, W)
        out = self.activation_out(out)
        return _conv_bn_spikes(self.Wproj, self.norm_proj, out, fast, gemm) + shortcut


class GWFFN(NumericsAware, nn.Module):
    """Group-Wise Spiking Feed-Forward Network with its residual (Eq. 16-18)."""

    def __init__(self, dim: int, neuron, ratio: int = 4, group_size: int = 64, num_conv: int = 1):
        super().__init__()
        inner = dim * ratio
        self.up = SNConvBN(neuron(), nn.Conv2d(dim, inner, 1, bias=False), nn.BatchNorm2d(inner))
        self.conv = nn.ModuleList(
            SNConvBN(neuron(), nn.Conv2d(inner, inner, 3, 1, 1, groups=inner // group_size, bias=False),
                     nn.BatchNorm2d(inner))
            for _ in range(num_conv)
        )
        self.down = SNConvBN(neuron(), nn.Conv2d(inner, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, fast, gemm = _block_frames(self, x, self.inner)
        shortcut_out = x
        x = self.up(x, fast, gemm)
        shortcut_in = x
        for m in self.conv:
            x = m(x, fast)
        x = x + shortcut_in
        return self.down(x, fast, gemm) + shortcut_out


class DownsampleLayer(NumericsAware, nn.Module):
    """SN - conv3x3 stride 2 - BN between stages (no residual)."""

    def __init__(self, in_dim: int, out_dim: int, neuron, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_dim)
        self.activation = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, fast, _ = _block_frames(self, x, self.conv.out_channels)
        return _conv_bn_spikes(self.conv, self.norm, self.activation(x), fast)


class SpikingResformer(SpikingClassifier):
    classifier_name = "classifier"
    classifier_bias = False

    def __init__(
        self,
        planes: Sequence[int] = (64, 192, 384),
        num_heads: Sequence[int] = (1, 3, 6),
        depths: Sequence[int] = (1, 2, 3),
        patch_sizes: Sequence[int] = (4, 2, 1),
        img_size: int = 224,
        T: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        imagenet_stem: bool = True,
        group_size: int = 64,
        neuron: Any = "lif",
        polarity_sum: bool = False,
    ):
        """``polarity_sum``: given 2-channel event frames, append their sum as a third channel (DVS models)."""
        super().__init__()
        if not len(planes) == len(num_heads) == len(depths) == len(patch_sizes):
            raise ValueError("planes, num_heads, depths and patch_sizes need one entry per stage")
        make = neuron_factory(neuron, **LIF_DEFAULTS)
        self.T, self.in_chans, self.num_classes, self.img_size = T, in_chans, num_classes, img_size
        self.polarity_sum = polarity_sum
        self.num_features = planes[-1]
        self.prologue = Prologue(in_chans, planes[0], imagenet_stem)
        size = img_size // 4 if imagenet_stem else img_size
        self.layers = nn.Sequential()
        for i, (dim, heads, depth, p) in enumerate(zip(planes, num_heads, depths, patch_sizes)):
            stage = nn.Sequential()
            if i:
                stage.append(DownsampleLayer(planes[i - 1], dim, make))
                size //= 2
            for _ in range(depth):
                stage.append(DSSA(dim, heads, (size // p) ** 2, p, make))
                stage.append(GWFFN(dim, make, group_size=group_size))
            self.layers.append(stage)
        self.classifier = nn.Linear(planes[-1], num_classes, bias=False) if num_classes > 0 else nn.Identity()
        # features_only: the ImageNet stem's BatchNorm output (before its max-pool), then every stage
        base = 4 if imagenet_stem else 1
        self.feature_info = [dict(num_chs=planes[0], reduction=2, module="prologue.1")] if imagenet_stem else []
        self.feature_info += [dict(num_chs=c, reduction=base * 2 ** i, module=f"layers.{i}")
                              for i, c in enumerate(planes)]
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """The PLIF rates, as in the official code (timm's optimiser factory reads this)."""
        return {n for n, _ in self.named_parameters() if n.endswith(".w")}

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated over T) or frames ``[T, B, C, H, W]`` -> pooled features ``[T, B, D]``."""
        if self.polarity_sum and x.dim() in (4, 5) and x.shape[-3] == 2 and self.in_chans == 3:
            x = torch.cat([x, x.sum(-3, keepdim=True)], dim=-3)
        x = expand_time(x, self.T, self.in_chans)
        x = self.layers(self.prologue(x))
        if x.requires_grad and _is_channels_last(x):  # the pool's gradient is a broadcast: hand it on channels-last
            x = _Relayout.apply(x, True)
        T, B = x.shape[:2]
        return F.adaptive_avg_pool2d(x.flatten(0, 1), 1).flatten(1).unflatten(0, (T, B))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]``: the mean over T of the per-step logits (:meth:`forward_per_step`, the official
        model's output), as the official loss and evaluation take it."""
        return self.forward_per_step(x).mean(0)


def checkpoint_filter_fn(state_dict: dict, model: SpikingResformer) -> dict:
    """Map an official SpikingResformer state_dict onto ours.

    The official ``BN`` wrapper adds a ``.bn`` level (``layers.0.0.norm.bn.weight`` -> ``layers.0.0.norm.weight``);
    everything else, including the DSSA firing-rate buffers and the PLIF ``w`` scalars, keeps its name and shape.
    A ``torch.compile`` prefix (``_orig_mod.``) is stripped as well.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("_orig_mod."):
            k = k[len("_orig_mod."):]
        out[k.replace(".bn.", ".")] = v
    return out


_PAPER = "SpikingResformer: Bridging ResNet and Vision Transformer in Spiking Neural Networks (CVPR 2024)"
_BN_NOTE = ("paper parameter counts leave out the BatchNorm affine parameters (thop counts only the conv and linear "
            "weights)")


def _imnet(top1, params, notes=""):
    return cfg(input_size=(3, 224, 224), T=4, num_classes=1000, dataset="imagenet",
               published={"imagenet": top1} if top1 else {}, paper_params_m=params, paper=_PAPER,
               mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.95, interpolation="bicubic",
               first_conv="prologue.0", classifier="classifier", notes=notes)


default_cfgs = {
    "spikingresformer_ti": _imnet(74.34, 11.14, _BN_NOTE),
    "spikingresformer_s": _imnet(
        75.95, 17.76, _BN_NOTE + "; the S row (75.95%, 17.76M) comes from third-party copies of the paper's table. "
        "Transfer learning from this model: CIFAR-10 97.40%, CIFAR-100 85.98% (T=4, 128x128 input: "
        "num_classes=..., img_size=128)"),
    "spikingresformer_m": _imnet(77.24, 35.52, _BN_NOTE),
    "spikingresformer_l": _imnet(
        78.77, 60.38, "78.77% at 224x224 comes from third-party copies of the paper's table; the paper's headline "
        "79.40% is at 288x288 (img_size=288). 60.38M is the count with BN affine parameters (60.27M without)"),
    "spikingresformer_cifar": cfg(
        input_size=(3, 32, 32), T=4, num_classes=10, dataset="cifar10", paper=_PAPER,
        mean=OFFICIAL_CIFAR_MEAN, std=OFFICIAL_CIFAR_STD, crop_pct=1.0, first_conv="prologue.0",
        classifier="classifier",
        notes="the paper's directly trained SpikingResformer-Ti* (configs/direct_training/cifar10.yaml, "
        "cifar100.yaml); num_classes=100 for CIFAR-100"),
    "spikingresformer_cifar_dvs": cfg(
        input_size=(3, 64, 64), T=16, num_classes=10, dataset="cifar10-dvs", paper=_PAPER,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0, first_conv="prologue.0", classifier="classifier",
        notes="official model spikingresformer_cifar with the CIFAR10-DVS recipe (T=16, frames resized to 64x64, "
        "a third channel = sum of the two polarities, appended by the model when given 2-channel frames)"),
    "spikingresformer_dvsg": cfg(
        input_size=(3, 64, 64), T=16, num_classes=11, dataset="dvs128-gesture", paper=_PAPER,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0, first_conv="prologue.0", classifier="classifier",
        notes="DVS128 Gesture model: parametric LIF, groups of 32 channels, T=16, 64x64 frames plus the polarity-sum "
        "channel (appended by the model when given 2-channel frames)"),
}

_STAGES = dict(depths=(1, 2, 3), patch_sizes=(4, 2, 1))


def _create(kw: dict, **arch) -> SpikingResformer:
    for k, v in arch.items():
        kw.setdefault(k, v)
    return SpikingResformer(**_STAGES, **kw)


@register_model
def spikingresformer_ti(**kw):
    return _create(kw, planes=(64, 192, 384), num_heads=(1, 3, 6))


@register_model
def spikingresformer_s(**kw):
    return _create(kw, planes=(64, 256, 512), num_heads=(1, 4, 8))


@register_model
def spikingresformer_m(**kw):
    return _create(kw, planes=(64, 384, 768), num_heads=(1, 6, 12))


@register_model
def spikingresformer_l(**kw):
    return _create(kw, planes=(128, 512, 1024), num_heads=(2, 8, 16))


@register_model
def spikingresformer_cifar(**kw):
    return _create(kw, planes=(64, 192, 384), num_heads=(1, 3, 6), imagenet_stem=False, img_size=32)


@register_model
def spikingresformer_cifar_dvs(**kw):
    return _create(kw, planes=(64, 192, 384), num_heads=(1, 3, 6), imagenet_stem=False, img_size=64,
                   polarity_sum=True)


@register_model
def spikingresformer_dvsg(**kw):
    return _create(kw, planes=(32, 96, 192), num_heads=(1, 3, 6), imagenet_stem=False, img_size=64,
                   group_size=32, neuron="plif", polarity_sum=True)
