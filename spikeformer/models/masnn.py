"""MA-SNN: "Attention Spiking Neural Networks" (Yao, Zhao, Zhang, Hu, Deng, Tian, Xu, Li; TPAMI 2023).

Faithful to the official code (BICLab/Attention-SNN) in its two settings:

* ``MA_SNN/DVSGestures`` (:class:`MASNN`, registered as ``masnn_dvs_gesture``): 2x32x32 event frames (128x128
  down-sampled by 4), T=60; three ``conv3x3(bias) -> BN -> [AvgPool2] -> attention -> LIF`` layers (64, 128, 128
  channels; pools 1, 2, 2), then ``Linear(128*8*8, 256) -> BN1d -> [TA] -> LIF`` and ``Linear(256, 11) -> BN1d ->
  [TA] -> LIF``; the output is the firing rate of the last layer (mean over T), trained with MSE to one-hot.
  Fully connected layers get TA only when the chosen attention contains T (as the official ``AttLIF``).
  The neuron is the repo's LIF (:class:`MALIF`: decay 0.3, threshold 0.3, rectangular surrogate of width 0.5).
* ``Att_Res_SNN`` (:class:`AttResNet`, ``masnn_resnet104``): MS-ResNet with membrane shortcuts whose basic block
  (:class:`AttResBlock`) is ``LIF -> conv3x3 -> BN -> LIF -> conv3x3 -> BN -> attention`` added to the shortcut;
  ImageNet uses CSA with ``c_ratio=8`` and T=1 in the released file.

Attention is the plug-in MA of :mod:`spikeformer.layers.masnn`, placed after conv-BN(-pool) and before the neuron.

Numerics (:mod:`spikeformer.layers.numerics`): convolution + BatchNorm run through the shared blocks. ``"exact"``
runs them on the merged NCHW ``[T*B, C, H, W]`` batch and the fully connected layers as ``nn.Linear`` +
``BatchNorm1d`` rows, the official operations. ``"fast"`` keeps the Gesture network's frames channels-last and
takes the products that read spikes (every convolution after the first, the fully connected layers) over the
nonzero spikes where few enough fire (about 1 % do), and runs the convolutional layers' attention by the gate
kernels (:meth:`~spikeformer.layers.masnn.MultiDimAttention.fused`). Att-Res-SNN keeps NCHW frames in fp32 on the
fast path too (:func:`_resnet_fast`): nothing on the fast path pays for it on CPU. The official neurons (MA-SNN's LIF,
MS-ResNet's LIF with a rectangular surrogate) have no compiled kernel and run as written in both.
The reduction ratios are the official configs' (Gesture ``c_ratio=8, t_ratio=5``; ImageNet CSA ``c_ratio=8``).
Official checkpoints are remapped by :func:`checkpoint_filter_fn`.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from ..kernels.cpu import bf16
from ..layers import NumericsAware, TokenBN, TokenLinear, expand_time, seq_apply, wants_fast
from ..layers.blocks import conv_bn, conv_bn_neuron, linear_bn, linear_bn_neuron
from ..layers.masnn import build_attention, official_attention_key
from ..neurons import IF, LIF, MALIF, PLIF, Rectangle, neuron_factory
from ._base import SpikingClassifier, check_global_pool
from .registry import cfg, register_model


def _fire(neuron: nn.Module, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """``neuron(x)``. On the fast path, channels-last frames ``[T, B, C, H, W]`` go to the neuron as the contiguous
    ``[T, B, H, W, C]`` tensor they are in memory (the official neurons act element by element, so the order of the
    dimensions after T is free) and the spikes come back channels-last, as the next convolution wants them: the
    neurons without a compiled kernel would otherwise return NCHW frames, to be copied back."""
    if (fast and x.dim() == 5 and type(neuron) in (LIF, IF, PLIF, MALIF) and not x.is_contiguous()
            and x.permute(0, 1, 3, 4, 2).is_contiguous()):
        return neuron(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
    return neuron(x)


# -- MA-SNN for event streams (DVS128 Gesture) -----------------------------------------------------------------

class ConvAttLIF(NumericsAware, nn.Module):
    """``conv -> BN -> [AvgPool] -> MA attention -> neuron`` on ``[T, B, C, H, W]`` (official ``ConvAttLIF``).
    ``spikes_in``: the input is a neuron's spikes (every layer but the first), so the fast path may convolve over
    the nonzero spikes alone."""

    def __init__(self, in_ch: int, out_ch: int, T: int, neuron, attention: Optional[str] = "TCSA", pool: int = 1,
                 kernel_size: int = 3, c_ratio: int = 8, t_ratio: int = 5, spikes_in: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=True)
        self.bn = nn.BatchNorm2d(out_ch)
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.attn = build_attention(attention, T, out_ch, t_ratio=t_ratio, c_ratio=c_ratio)
        self.neuron = neuron()
        self.spikes_in = spikes_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        if self.attn is None and isinstance(self.pool, nn.Identity):
            return conv_bn_neuron(self.conv, self.bn, self.neuron, x, self.spikes_in, fast)
        x = conv_bn(self.conv, self.bn, x, self.spikes_in, fast)
        if not isinstance(self.pool, nn.Identity):
            x = seq_apply(self.pool, x)
        if self.attn is not None:
            y = self.attn.fused(x) if fast else None
            x = self.attn(x) if y is None else y
        return _fire(self.neuron, x, fast)


class LinearAttLIF(NumericsAware, nn.Module):
    """``Linear -> BN1d -> [TA] -> neuron`` on ``[T, B, C]`` (official ``AttLIF``: ``nn.Linear`` and
    ``BatchNorm1d`` on the ``[B*T, C]`` rows). ``spikes_in``: the input is spikes (the fast path may take the
    product over the nonzero ones)."""

    def __init__(self, in_features: int, out_features: int, T: int, neuron, temporal: bool, t_ratio: int = 5,
                 spikes_in: bool = True):
        super().__init__()
        self.fc = TokenLinear(in_features, out_features)
        self.bn = TokenBN(out_features)
        self.attn = build_attention("TA", T, out_features, t_ratio=t_ratio) if temporal else None
        self.neuron = neuron()
        self.spikes_in = spikes_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sparse = self.spikes_in and wants_fast(self, x)
        if self.attn is None:
            return linear_bn_neuron(self.fc, self.bn, self.neuron, x, sparse=sparse)
        return self.neuron(self.attn(linear_bn(self.fc, self.bn, x, sparse=sparse)))


class MASNN(SpikingClassifier):
    """The MA-SNN convolutional network of the official DVS128 Gesture code (``Networks/Att_SNN.py``).

    ``attention`` is one of 'TCSA' (default), 'TCA', 'TSA', 'CSA', 'TA', 'CA', 'SA' or 'no' (the vanilla SNN).
    ``forward`` returns the output layer's firing rates ``[B, num_classes]`` (the official output; train with
    MSE to one-hot as the paper's code does, or cross-entropy on the rates). The classifier is the last layer
    ``fc1`` (Linear, BN1d, [TA], neuron); ``forward_features`` are the firing rates of the hidden layer ``fc0``
    (``num_features = hidden``).
    """

    classifier_name = "fc1"

    def __init__(
        self,
        in_chans: int = 2,
        num_classes: int = 11,
        T: int = 60,
        img_size: int = 32,
        attention: Optional[str] = "TCSA",
        c_ratio: int = 8,
        t_ratio: int = 5,
        channels: Sequence[int] = (64, 128, 128),
        pools: Sequence[int] = (1, 2, 2),
        hidden: int = 256,
        neuron: Any = None,
    ):
        super().__init__()
        if len(channels) != len(pools):
            raise SpikeformerError(f"channels {tuple(channels)} and pools {tuple(pools)} must have the same length")
        self._make = neuron_factory(MALIF) if neuron is None else neuron_factory(neuron)
        self.T, self.in_chans, self.num_classes, self.attention = T, in_chans, num_classes, attention
        layers, c, size = [], in_chans, img_size
        for i, (out_ch, pool) in enumerate(zip(channels, pools)):
            layers.append(ConvAttLIF(c, out_ch, T, self._make, attention, pool, c_ratio=c_ratio, t_ratio=t_ratio,
                                     spikes_in=i > 0))
            c, size = out_ch, size // pool
        self.features = nn.ModuleList(layers)
        self.flat_features = c * size * size
        self.num_features = hidden
        self._temporal = attention is not None and "T" in str(attention).upper()
        self._t_ratio = t_ratio
        self.fc0 = LinearAttLIF(self.flat_features, hidden, T, self._make, self._temporal, t_ratio)
        self.fc1 = (LinearAttLIF(hidden, num_classes, T, self._make, self._temporal, t_ratio) if num_classes > 0
                    else nn.Identity())  # num_classes=0: features only, as reset_classifier(0)
        self.feature_info, r = [], 1  # features_only: every convolutional layer
        for i, (out_ch, pool) in enumerate(zip(channels, pools)):
            r *= pool
            self.feature_info.append(dict(num_chs=out_ch, reduction=r, module=f"features.{i}"))

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Frames ``[T, B, C, H, W]`` (or images, repeated over T) -> flattened spike maps ``[T, B, F]``."""
        x = expand_time(x, self.T, self.in_chans)
        size = tuple(x.shape[-2:])
        for layer in self.features:
            x = layer(x)
        if x.shape[2:].numel() != self.flat_features:
            raise SpikeformerError(
                f"frames of size {size} give {x.shape[2:].numel()} features but the model was built for "
                f"{self.flat_features}; pass img_size= the frame size (default 32: 128x128 events down-sampled by 4)"
            )
        return x.flatten(2)  # the official C, H, W order (a copy of channels-last frames)

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer's spikes ``[T, B, hidden]``, what the classifier ``fc1`` sees."""
        return self.fc0(self.forward_maps(x))

    def head_per_step(self, feats: torch.Tensor) -> torch.Tensor:
        """The output layer's spikes ``[T, B, classes]`` (its BatchNorm and TA see every step at once)."""
        return self.fc1(feats)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, **_) -> None:
        """A fresh output layer (Linear, BN1d, [TA], neuron) for ``num_classes`` classes (``0``: features only)."""
        check_global_pool(self, global_pool)
        self.num_classes = num_classes
        dev = self.fc0.fc.weight.device
        self.fc1 = (LinearAttLIF(self.num_features, num_classes, self.T, self._make, self._temporal,
                                 self._t_ratio).to(dev) if num_classes > 0 else nn.Identity())


# -- Att-Res-SNN (MS-ResNet with MA, ImageNet) -----------------------------------------------------------------

MS_LIF = dict(tau=4.0 / 3.0, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True)
"""The Att-Res-SNN ``mem_update``: ``mem = 0.25 * mem * (1 - spike.detach()) + x``, spike at 0.5, i.e. a LIF with
``1 - 1/tau = 0.25`` and no input decay (rectangular surrogate of width 1 added by :class:`AttResNet`)."""


def _resnet_fast(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether an Att-Res-SNN layer takes the blocks' fast path (channels-last frames): in reduced precision only. In
    fp32 its 3x3 convolutions train faster on NCHW frames on CPU (a channels-last convolution reorders its weight
    and weight gradient at every call), its neuron (rectangular surrogate) has no compiled kernel to fuse with
    BatchNorm, and its firing (about 15 %) is too dense for products over the nonzero spikes to pay."""
    return wants_fast(module, x) and not bf16.fp32_products(x)  # (emulated bf16: fp32 products, kernels/cpu/bf16.py)


def _bn(channels: int, weight: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    nn.init.constant_(bn.weight, weight)  # official BatchNorm3d1/3d2 start at thresh / 0.2*thresh
    return bn


class AttResBlock(NumericsAware, nn.Module):
    """Att-Res-SNN basic block: the MS-ResNet residual branch ``LIF -> conv3x3 -> BN -> LIF -> conv3x3 -> BN`` with
    MA attention at its end, added (as membrane input) to an identity or ``AvgPool -> conv1x1 -> BN`` shortcut.

    ``attention`` selects the variant ('CSA' as released for ImageNet, or 'TCSA', 'TCA', 'TSA', 'TA', 'CA', 'SA';
    'no' gives the plain MS-ResNet block). The released code has only this placement (end of the residual
    branch, before the addition).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, T: int, neuron, attention: Optional[str] = "CSA",
                 c_ratio: int = 8, t_ratio: int = 1, threshold: float = 0.5):
        super().__init__()
        self.lif1 = neuron()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = _bn(out_ch, threshold)
        self.lif2 = neuron()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = _bn(out_ch, 0.2 * threshold)
        self.attn = build_attention(attention, T, out_ch, t_ratio=t_ratio, c_ratio=c_ratio)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential()
            if stride != 1:
                self.shortcut.add_module("pool", nn.AvgPool2d(stride))
            self.shortcut.add_module("conv", nn.Conv2d(in_ch, out_ch, 1, bias=False))
            self.shortcut.add_module("bn", _bn(out_ch, threshold))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = _resnet_fast(self, x)
        gemm = not fast and wants_fast(self, x)  # fp32 fast numerics: small 1x1 convolutions as GEMMs
        out = conv_bn(self.conv1, self.bn1, _fire(self.lif1, x, fast), spikes_in=True, fast=fast, gemm=gemm)
        out = conv_bn(self.conv2, self.bn2, _fire(self.lif2, out, fast), spikes_in=True, fast=fast, gemm=gemm)
        if self.attn is not None:
            out = self.attn(out)
        if self.shortcut is None:
            return out + x
        short = seq_apply(self.shortcut.pool, x) if hasattr(self.shortcut, "pool") else x
        # membrane input, not spikes
        return out + conv_bn(self.shortcut.conv, self.shortcut.bn, short, fast=fast, gemm=gemm)


class AttResNet(NumericsAware, SpikingClassifier):
    """Att-MS-ResNet (``Att_Res_SNN/models/resnet_2.py``): conv7x7/2-BN stem (no max-pool), four stride-2
    stages of :class:`AttResBlock` (64, 128, 256, 512), LIF -> global average pool -> mean over T -> dropout 0.2
    -> Linear."""

    classifier_name = "fc"

    def __init__(self, layers: Sequence[int] = (3, 8, 32, 8), num_classes: int = 1000, T: int = 1,
                 in_chans: int = 3, attention: Optional[str] = "CSA", c_ratio: int = 8, t_ratio: int = 1,
                 drop_rate: float = 0.2, neuron: Any = None, img_size: int | None = None):
        super().__init__()
        make = (neuron_factory(LIF, surrogate=Rectangle(1.0), **MS_LIF) if neuron is None
                else neuron_factory(neuron))
        self.T, self.in_chans, self.num_classes = T, in_chans, num_classes
        self.stem_conv = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.stem_bn = _bn(64, 0.5)
        c, stages = 64, []
        for width, n in zip((64, 128, 256, 512), layers):
            blocks = []
            for i in range(n):
                blocks.append(AttResBlock(c, width, 2 if i == 0 else 1, T, make, attention, c_ratio, t_ratio))
                c = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.lif = make()
        self.num_features = c
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()
        # features_only: the stem's BatchNorm output, then every stage
        self.feature_info = [dict(num_chs=64, reduction=2, module="stem_bn")] + [
            dict(num_chs=w, reduction=4 * 2 ** i, module=f"layer{i + 1}") for i, w in enumerate((64, 128, 256, 512))]

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated over T) or frames ``[T, B, C, H, W]`` -> pooled rates ``[T, B, 512]``."""
        x = expand_time(x, self.T, self.in_chans)
        fast = _resnet_fast(self, x)
        x = conv_bn(self.stem_conv, self.stem_bn, x, fast=fast)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return _fire(self.lif, x, fast).mean((3, 4))

    def head_per_step(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]``: the official order, mean over T before dropout and the classifier."""
        return self.fc(self.drop(self.forward_features(x)))


# -- official checkpoints --------------------------------------------------------------------------------------

_GESTURE_RULES = [
    (r"^convAttLIF(\d+)\.conv2d\.", r"features.\1.conv."),
    (r"^convAttLIF(\d+)\.BNLayer\.", r"features.\1.bn."),
    (r"^convAttLIF(\d+)\.attention\.", r"features.\1.attn."),
    (r"^FC(\d+)\.linear\.", r"fc\1.fc."),
    (r"^FC(\d+)\.BNLayer\.", r"fc\1.bn."),
    (r"^FC(\d+)\.attention\.", r"fc\1.attn."),
]
_RESNET_RULES = [
    (r"^conv1\.0\.", "stem_conv."),
    (r"^conv1\.1\.bn\.", "stem_bn."),
    (r"^conv(\d)_x\.", lambda m: f"layer{int(m.group(1)) - 1}."),
    (r"\.residual_function\.1\.", ".conv1."),
    (r"\.residual_function\.2\.bn\.", ".bn1."),
    (r"\.residual_function\.4\.", ".conv2."),
    (r"\.residual_function\.5\.bn\.", ".bn2."),
    (r"\.residual_function\.6\.attention\.", ".attn."),
    (r"\.shortcut\.1\.", ".shortcut.conv."),
    (r"\.shortcut\.2\.bn\.", ".shortcut.bn."),
]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an official MA-SNN state_dict (Gesture ``Net`` or Att-Res-SNN ``ResNet_origin``) onto ours.

    Renames the modules and flattens the attention MLPs' 1x1x1 Conv3d / Conv1d kernels to Linear weights.
    """
    rules = _RESNET_RULES if isinstance(model, AttResNet) else _GESTURE_RULES
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        k, v = official_attention_key(k, v)
        out[k] = v
    return out


# -- registry --------------------------------------------------------------------------------------------------

_PAPER = "Attention Spiking Neural Networks (Yao et al., TPAMI 2023)"

default_cfgs = {
    "masnn_dvs_gesture": cfg(
        input_size=(2, 32, 32), T=60, num_classes=11, dataset="dvs128-gesture",
        published={"dvs128-gesture": 96.53}, paper=_PAPER, mean=(0.0, 0.0), std=(1.0, 1.0),
        first_conv="features.0.conv", classifier="fc1.fc",
        notes="TCSA, c_ratio 8, t_ratio 5; 128x128 events down-sampled by 4, T=60 frames of dt ms. 96.53% "
        "(dt=15, T=60) is quoted from the paper in the official repo's issue #4; which attention variant it is "
        "was not verified. attention='no' gives the vanilla SNN baseline.",
    ),
    "masnn_resnet104": cfg(
        input_size=(3, 224, 224), T=1, num_classes=1000, dataset="imagenet",
        published={"imagenet": 75.92}, paper=_PAPER, crop_pct=0.875, interpolation="bilinear", first_conv="stem_conv",
        classifier="fc",
        notes="Att(CSA)-MS-ResNet-104, T=1 as released; the paper reports 77.08% with T=4 (pass T=4).",
    ),
}


@register_model
def masnn_dvs_gesture(**kw):
    return MASNN(**kw)


@register_model
def masnn_resnet104(**kw):
    return AttResNet(layers=(3, 8, 32, 8), **kw)


__all__ = [
    "Rectangle", "MALIF", "ConvAttLIF", "LinearAttLIF", "MASNN", "AttResBlock", "AttResNet", "checkpoint_filter_fn",
]
