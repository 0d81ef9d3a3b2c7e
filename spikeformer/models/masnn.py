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
The reduction ratios are the official configs' (Gesture ``c_ratio=8, t_ratio=5``; ImageNet CSA ``c_ratio=8``).
Official checkpoints are remapped by :func:`checkpoint_filter_fn`.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from ..layers import TokenBN, expand_time, seq_apply
from ..layers.masnn import build_attention, official_attention_key
from ..neurons import LIF, MALIF, Rectangle, neuron_factory
from .registry import cfg, register_model


# -- MA-SNN for event streams (DVS128 Gesture) -----------------------------------------------------------------

class ConvAttLIF(nn.Module):
    """``conv -> BN -> [AvgPool] -> MA attention -> neuron`` on ``[T, B, C, H, W]`` (official ``ConvAttLIF``)."""

    def __init__(self, in_ch: int, out_ch: int, T: int, neuron, attention: Optional[str] = "TCSA", pool: int = 1,
                 kernel_size: int = 3, c_ratio: int = 8, t_ratio: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=True)
        self.bn = nn.BatchNorm2d(out_ch)
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.attn = build_attention(attention, T, out_ch, t_ratio=t_ratio, c_ratio=c_ratio)
        self.neuron = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = seq_apply(nn.Sequential(self.conv, self.bn, self.pool), x)
        if self.attn is not None:
            x = self.attn(x)
        return self.neuron(x)


class LinearAttLIF(nn.Module):
    """``Linear -> BN1d -> [TA] -> neuron`` on ``[T, B, C]`` (official ``AttLIF``)."""

    def __init__(self, in_features: int, out_features: int, T: int, neuron, temporal: bool, t_ratio: int = 5):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.bn = TokenBN(out_features)
        self.attn = build_attention("TA", T, out_features, t_ratio=t_ratio) if temporal else None
        self.neuron = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.fc(x))
        if self.attn is not None:
            x = self.attn(x)
        return self.neuron(x)


class MASNN(nn.Module):
    """The MA-SNN convolutional network of the official DVS128 Gesture code (``Networks/Att_SNN.py``).

    ``attention`` is one of 'TCSA' (default), 'TCA', 'TSA', 'CSA', 'TA', 'CA', 'SA' or 'no' (the vanilla SNN).
    ``forward`` returns the output layer's firing rates ``[B, num_classes]`` (the official output; train with
    MSE to one-hot as the paper's code does, or cross-entropy on the rates).
    """

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
        make = neuron_factory(MALIF) if neuron is None else neuron_factory(neuron)
        self.T, self.in_chans, self.num_classes, self.attention = T, in_chans, num_classes, attention
        layers, c, size = [], in_chans, img_size
        for out_ch, pool in zip(channels, pools):
            layers.append(ConvAttLIF(c, out_ch, T, make, attention, pool, c_ratio=c_ratio, t_ratio=t_ratio))
            c, size = out_ch, size // pool
        self.features = nn.ModuleList(layers)
        self.num_features = c * size * size
        temporal = attention is not None and "T" in str(attention).upper()
        self.fc0 = LinearAttLIF(self.num_features, hidden, T, make, temporal, t_ratio)
        self.fc1 = LinearAttLIF(hidden, num_classes, T, make, temporal, t_ratio)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Frames ``[T, B, C, H, W]`` (or images, repeated over T) -> flattened spike maps ``[T, B, F]``."""
        x = expand_time(x, self.T, self.in_chans)
        size = tuple(x.shape[-2:])
        for layer in self.features:
            x = layer(x)
        if x.shape[2:].numel() != self.num_features:
            raise SpikeformerError(
                f"frames of size {size} give {x.shape[2:].numel()} features but the model was built for "
                f"{self.num_features}; pass img_size= the frame size (default 32: 128x128 events down-sampled by 4)"
            )
        return x.flatten(2)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.fc0(x)).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- Att-Res-SNN (MS-ResNet with MA, ImageNet) -----------------------------------------------------------------

MS_LIF = dict(tau=4.0 / 3.0, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True)
"""The Att-Res-SNN ``mem_update``: ``mem = 0.25 * mem * (1 - spike.detach()) + x``, spike at 0.5, i.e. a LIF with
``1 - 1/tau = 0.25`` and no input decay (rectangular surrogate of width 1 added by :class:`AttResNet`)."""


def _bn(channels: int, weight: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    nn.init.constant_(bn.weight, weight)  # official BatchNorm3d1/3d2 start at thresh / 0.2*thresh
    return bn


class AttResBlock(nn.Module):
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
        out = seq_apply(nn.Sequential(self.conv1, self.bn1), self.lif1(x))
        out = seq_apply(nn.Sequential(self.conv2, self.bn2), self.lif2(out))
        if self.attn is not None:
            out = self.attn(out)
        return out + (x if self.shortcut is None else seq_apply(self.shortcut, x))


class AttResNet(nn.Module):
    """Att-MS-ResNet (``Att_Res_SNN/models/resnet_2.py``): conv7x7/2-BN stem (no max-pool), four stride-2
    stages of :class:`AttResBlock` (64, 128, 256, 512), LIF -> global average pool -> mean over T -> dropout 0.2
    -> Linear."""

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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated over T) or frames ``[T, B, C, H, W]`` -> pooled rates ``[B, 512]``."""
        x = expand_time(x, self.T, self.in_chans)
        x = seq_apply(nn.Sequential(self.stem_conv, self.stem_bn), x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.lif(x).mean((3, 4)).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
