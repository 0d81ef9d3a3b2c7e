"""A plain convolutional SNN baseline (the project's seed report; SpikingJelly-style CSNN layers).

``ConvBlock(3,128) ConvBlock(128,128) MaxPool, ConvBlock(128,256) ConvBlock(256,256) MaxPool, ConvBlock(256,512)
ConvBlock(512,512) MaxPool, Linear(512*4*4, 1024), IF, Linear(1024, 10)`` with ``ConvBlock = Conv3x3 -> BN -> IF``
(ATan surrogate, alpha 2, as SpikingJelly's ``IFNode`` defaults), direct encoding over T=4 and the mean over T of
the per-step logits as output. The convolutions have no bias (a BN follows each), as in SpikingJelly's CSNN
examples. SpikingJelly ships no CIFAR-10 example with this network, so there is no published accuracy for it;
the recipe (Adam 1e-3, cosine, batch 128) is ``configs/spiking_convnet_cifar10.yaml``.

``spiking_convnet_digits`` is the same network at 1/8 width for the embedded 1x16x16 digits (16-32-64
channels, 2x2 maps after three pools, FC 256 -> 128 -> 10).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from ..layers import expand_time, seq_apply
from ..neurons import ATan, neuron_factory
from .registry import CIFAR_MEAN, CIFAR_STD, cfg, register_model

IF_DEFAULTS = dict(v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate=ATan(2.0))


class ConvBlock(nn.Module):
    """Conv3x3 -> BN -> neuron on ``[T, B, C, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, neuron):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.neuron = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(seq_apply(nn.Sequential(self.conv, self.bn), x))


class SpikingConvNet(nn.Module):
    """Three stages of two :class:`ConvBlock` and a 2x2 max-pool, then ``Linear -> neuron -> Linear``."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        T: int = 4,
        img_size: int = 32,
        widths: Sequence[int] = (128, 256, 512),
        hidden: int = 1024,
        neuron: Any = "if",
    ):
        super().__init__()
        if img_size % 8:
            raise SpikeformerError(f"img_size must be divisible by 8 (three 2x2 max-pools); got {img_size}")
        make = neuron_factory(neuron, **IF_DEFAULTS)
        self.T, self.in_chans, self.num_classes = T, in_chans, num_classes
        layers, c = [], in_chans
        for w in widths:
            layers += [ConvBlock(c, w, make), ConvBlock(w, w, make), nn.MaxPool2d(2)]
            c = w
        self.features = nn.ModuleList(layers)
        self.num_features = c * (img_size // 8) ** 2
        self.fc1 = nn.Linear(self.num_features, hidden)
        self.fc1_neuron = make()
        self.head = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated over T) or frames ``[T, B, C, H, W]`` -> hidden spikes ``[T, B, F]``."""
        x = expand_time(x, self.T, self.in_chans)
        for layer in self.features:
            x = seq_apply(layer, x) if isinstance(layer, nn.MaxPool2d) else layer(x)
        x = x.flatten(2)
        if x.shape[-1] != self.num_features:
            raise SpikeformerError(
                f"the input gives {x.shape[-1]} features after the conv stages but the model was built for "
                f"{self.num_features}; pass img_size= the input image size"
            )
        return self.fc1_neuron(self.fc1(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = {
    "spiking_convnet_cifar10": cfg(
        input_size=(3, 32, 32), T=4, num_classes=10, dataset="cifar10", mean=CIFAR_MEAN, std=CIFAR_STD,
        paper="conv-SNN baseline (seed report; SpikingJelly-style CSNN)", first_conv="features.0.conv",
        notes="no published accuracy: SpikingJelly has no CIFAR-10 example with this network",
    ),
    "spiking_convnet_digits": cfg(
        input_size=(1, 16, 16), T=4, num_classes=10, dataset="digits", mean=(0.0,), std=(1.0,),
        paper="conv-SNN baseline (seed report; SpikingJelly-style CSNN)", first_conv="features.0.conv",
        notes="the CIFAR baseline at 1/8 width for the embedded 1x16x16 digits",
    ),
}


@register_model
def spiking_convnet_cifar10(**kw):
    return SpikingConvNet(**kw)


@register_model
def spiking_convnet_digits(**kw):
    kw.setdefault("in_chans", 1)
    kw.setdefault("img_size", 16)
    return SpikingConvNet(widths=(16, 32, 64), hidden=128, **kw)
