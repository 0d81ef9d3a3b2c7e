"""A plain convolutional SNN baseline (the project's seed report; SpikingJelly-style CSNN layers).

``ConvBlock(3,128) ConvBlock(128,128) MaxPool, ConvBlock(128,256) ConvBlock(256,256) MaxPool, ConvBlock(256,512)
ConvBlock(512,512) MaxPool, Linear(512*4*4, 1024), IF, Linear(1024, 10)`` with ``ConvBlock = Conv3x3 -> BN -> IF``
(ATan surrogate, alpha 2, as SpikingJelly's ``IFNode`` defaults), direct encoding over T=4 and the mean over T of
the per-step logits as output. The convolutions have no bias (a BN follows each), as in SpikingJelly's CSNN
examples. SpikingJelly ships no CIFAR-10 example with this network, so there is no published accuracy for it;
the recipe (Adam 1e-3, cosine, batch 128) is ``configs/spiking_convnet_cifar10.yaml``.

Numerics (:mod:`spikeformer.layers.numerics`): ``"exact"`` runs each block as SpikingJelly's multi-step layers do
(convolution and BatchNorm2d on the merged NCHW ``[T*B, C, H, W]`` batch, then the neuron); ``"fast"`` runs
:func:`~spikeformer.layers.blocks.conv_bn_neuron` on channels-last frames, with BatchNorm and IF fused into one
compiled kernel and the convolutions that read spikes over the nonzero ones where few enough fire.

``spiking_convnet_digits`` is the same network at 1/8 width for the embedded 1x16x16 digits (16-32-64
channels, 2x2 maps after three pools, FC 256 -> 128 -> 10).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from ..layers import NumericsAware, expand_time, seq_apply, wants_fast
from ..layers.blocks import conv_bn_neuron
from ..neurons import ATan, neuron_factory
from ._base import SpikingClassifier
from .registry import CIFAR_MEAN, CIFAR_STD, cfg, register_model

IF_DEFAULTS = dict(v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate=ATan(2.0))


class ConvBlock(NumericsAware, nn.Module):
    """Conv3x3 -> BN -> neuron on ``[T, B, C, H, W]`` (:func:`~spikeformer.layers.blocks.conv_bn_neuron`: on the
    fast path channels-last frames, the convolution over nonzero spikes where few fire (``spikes_in``), BatchNorm
    and the IF neuron in one compiled kernel)."""

    def __init__(self, in_ch: int, out_ch: int, neuron, spikes_in: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.neuron = neuron()
        self.spikes_in = spikes_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_neuron(self.conv, self.bn, self.neuron, x, self.spikes_in, wants_fast(self, x))


class SpikingConvNet(SpikingClassifier):
    """Three stages of two :class:`ConvBlock` and a 2x2 max-pool, then ``Linear -> neuron -> Linear``; the
    classifier ``head`` sees the hidden spikes (``num_features = hidden``) at every step."""

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
            # max-pooled spikes are spikes: every block but the first reads spikes
            layers += [ConvBlock(c, w, make, spikes_in=bool(layers)), ConvBlock(w, w, make, spikes_in=True),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.ModuleList(layers)
        self.flat_features = c * (img_size // 8) ** 2
        self.num_features = hidden
        self.fc1 = nn.Linear(self.flat_features, hidden)
        self.fc1_neuron = make()
        self.head = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        # features_only: each stage's last block (before its max-pool), then the last max-pool, what fc1 reads
        self.feature_info = [dict(num_chs=w, reduction=2 ** k, module=f"features.{3 * k + 1}")
                             for k, w in enumerate(widths)]
        self.feature_info.append(dict(num_chs=widths[-1], reduction=2 ** len(widths),
                                      module=f"features.{len(layers) - 1}"))

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated over T) or frames ``[T, B, C, H, W]`` -> hidden spikes ``[T, B, F]``."""
        x = expand_time(x, self.T, self.in_chans)
        for layer in self.features:
            x = seq_apply(layer, x) if isinstance(layer, nn.MaxPool2d) else layer(x)
        x = x.flatten(2)  # the C, H, W order of NCHW frames (a copy of channels-last ones)
        if x.shape[-1] != self.flat_features:
            raise SpikeformerError(
                f"the input gives {x.shape[-1]} features after the conv stages but the model was built for "
                f"{self.flat_features}; pass img_size= the input image size"
            )
        return self.fc1_neuron(self.fc1(x))


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
