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

Deviations, none of which changes a result the official code computes: time is folded into the batch by our
own modules instead of SpikingJelly's ``step_mode='m'`` layers, the BN wrapper level (``norm.bn.weight``) is gone
(``norm.weight``; :func:`checkpoint_filter_fn` maps it), frame input is ``[T, B, C, H, W]`` (the official forward
takes ``[B, T, C, H, W]``), DVS models append the polarity-sum channel themselves when given 2-channel frames
(the official ``DVStransform`` does it in the data pipeline), and in eval mode a DSSA whose firing-rate buffers were
never set (all zero: a fresh, untrained model) uses the batch's firing rate instead of dividing by zero, and a
head whose firing rate is exactly 0 gets scale 0 instead of the official ``1/0`` (which makes every output NaN).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..neurons import ATan, neuron_factory
from ..layers import expand_time
from .registry import IMAGENET_MEAN, IMAGENET_STD, cfg, register_model

# SpikingJelly 0.0.0.0.14 LIFNode as the official `LIF` wrapper builds it (models/submodules/layers.py).
LIF_DEFAULTS = dict(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, detach_reset=True, surrogate=ATan(2.0))

# The official CIFAR loaders normalise with these (note the std differs from the usual CIFAR-10 std).
OFFICIAL_CIFAR_MEAN, OFFICIAL_CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


# -- time-folding layers: [T, B, C, H, W] in and out, statistics over the merged T*B batch ---------------------------
class SeqConv2d(nn.Conv2d):
    """``nn.Conv2d`` on ``[T, B, C, H, W]`` (time folded into the batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class SeqBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` on ``[T, B, C, H, W]``; statistics over T*B*H*W like SpikingJelly's ``seq_to_ann``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class SeqMaxPool2d(nn.MaxPool2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def conv_bn_stem(in_chans: int, dim: int, imagenet: bool) -> nn.Sequential:
    if imagenet:
        return nn.Sequential(
            SeqConv2d(in_chans, dim, 7, 2, 3, bias=False), SeqBatchNorm2d(dim), SeqMaxPool2d(3, 2, 1)
        )
    return nn.Sequential(SeqConv2d(in_chans, dim, 3, 1, 1, bias=False), SeqBatchNorm2d(dim))


def _inv_sqrt(r: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(r)``, and 0 where a head's firing rate is 0: that head's spikes are all zero then, and the
    official ``0 * inf`` would turn the whole network's output (and gradients) into NaN."""
    s = 1.0 / torch.sqrt(r)
    return torch.where(r > 0, s, torch.zeros_like(s))


class DSSA(nn.Module):
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
        self.W = SeqConv2d(dim, dim * 2, patch_size, patch_size, bias=False)
        self.norm = SeqBatchNorm2d(dim * 2)
        self.activation_attn = neuron()
        self.activation_out = neuron()
        self.Wproj = SeqConv2d(dim, dim, 1, bias=False)
        self.norm_proj = SeqBatchNorm2d(dim)

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
        shortcut = x
        x = self.activation_in(x)
        y = self.norm(self.W(x)).reshape(T, B, h, 2 * d, -1)  # [T, B, h, 2d, L]
        y1, y2 = y[:, :, :, :d, :], y[:, :, :, d:, :]
        x = x.reshape(T, B, h, d, -1)  # [T, B, h, d, HW]

        scale1 = _inv_sqrt(self._firing_rate("firing_rate_x", x) * (self.dim // self.num_heads))
        attn = self.activation_attn(torch.matmul(y1.transpose(-1, -2), x) * scale1)  # [T, B, h, L, HW]
        scale2 = _inv_sqrt(self._firing_rate("firing_rate_attn", attn) * self.lenth)
        out = (torch.matmul(y2, attn) * scale2).reshape(T, B, C, H, W)
        out = self.activation_out(out)
        return self.norm_proj(self.Wproj(out)) + shortcut


class GWFFN(nn.Module):
    """Group-Wise Spiking Feed-Forward Network with its residual (Eq. 16-18)."""

    def __init__(self, dim: int, neuron, ratio: int = 4, group_size: int = 64, num_conv: int = 1):
        super().__init__()
        inner = dim * ratio
        self.up = nn.Sequential(neuron(), SeqConv2d(dim, inner, 1, bias=False), SeqBatchNorm2d(inner))
        self.conv = nn.ModuleList(
            nn.Sequential(
                neuron(), SeqConv2d(inner, inner, 3, 1, 1, groups=inner // group_size, bias=False),
                SeqBatchNorm2d(inner),
            )
            for _ in range(num_conv)
        )
        self.down = nn.Sequential(neuron(), SeqConv2d(inner, dim, 1, bias=False), SeqBatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut_out = x
        x = self.up(x)
        shortcut_in = x
        for m in self.conv:
            x = m(x)
        x = x + shortcut_in
        return self.down(x) + shortcut_out


class DownsampleLayer(nn.Module):
    """SN - conv3x3 stride 2 - BN between stages (no residual)."""

    def __init__(self, in_dim: int, out_dim: int, neuron, stride: int = 2):
        super().__init__()
        self.conv = SeqConv2d(in_dim, out_dim, 3, stride, 1, bias=False)
        self.norm = SeqBatchNorm2d(out_dim)
        self.activation = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.activation(x)))


class SpikingResformer(nn.Module):
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
        self.prologue = conv_bn_stem(in_chans, planes[0], imagenet_stem)
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

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes, bias=False) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated over T) or frames ``[T, B, C, H, W]`` -> pooled features ``[T, B, D]``."""
        if self.polarity_sum and x.dim() in (4, 5) and x.shape[-3] == 2 and self.in_chans == 3:
            x = torch.cat([x, x.sum(-3, keepdim=True)], dim=-3)
        x = expand_time(x, self.T, self.in_chans)
        x = self.layers(self.prologue(x))
        T, B = x.shape[:2]
        return F.adaptive_avg_pool2d(x.flatten(0, 1), 1).flatten(1).unflatten(0, (T, B))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats).mean(0)

    def forward_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Per-time-step logits ``[T, B, classes]``: the official model's output (for TET-style losses)."""
        return self.classifier(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]``: the mean over T of the per-step logits, as the official loss and eval use."""
        return self.forward_head(self.forward_features(x))


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
