"""Spikingformer: "Spikingformer: Spike-driven Residual Learning for Transformer-based Spiking Neural Network"
(Zhou C. et al., arXiv 2304.11954).

Faithful to the official code (zhouchenlin2096/Spikingformer) in its three variants:

* ``imagenet`` (``imagenet/model.py``): a spiking tokenizer of five conv3x3-BN stages, the first on the raw image and
  each later one preceded by a LIF and a max-pool (224 -> 14, 196 tokens); attention computes ``Q (K^T V)``.
* ``cifar`` (``cifar10/model.py``, ``cifar100/model.py``): the same tokenizer pooling only before the last two
  stages (32 -> 8, 64 tokens).
* ``dvs`` (``cifar10-dvs/model.py``, ``dvs128-gesture/model.py``): the ImageNet tokenizer on 2-channel event frames,
  every LIF with ``tau = 1.5``.

The change from Spikformer (paper Sec. 3, "spike-driven residual learning") is pre-activation: a LIF sits *before*
every convolution, so each conv/linear only ever sees binary spikes, and the residual stream adds BN outputs (real
values) instead of spikes. Spiking Self Attention is Spikformer's ``SN(Q K^T V * 0.125)`` with an attention LIF of
threshold 0.5 (scale 0.125 in every variant, DVS included); the head is a Linear on the mean over tokens and time of
the real-valued stream, with no LIF before it.

The LayerNorms (``norm1``/``norm2``) and ``drop_path`` the official blocks build but never call are not built. The
1x1 convolutions (Conv1d in attention, Conv2d in the MLP, in every variant) are :class:`~spikeformer.layers.TokenLinear`
layers: ``numerics="exact"`` runs those convolutions on the official ``[T*B, C, N]`` / ``[T*B, C, H, W]`` layouts (the
official logits bit for bit), ``numerics="fast"`` the shared fast blocks (products over nonzero spikes -- every
projection reads spikes --, BatchNorm + LIF fused where a BatchNorm feeds a LIF, channels-last tokenizer, compiled
spike attention). Official checkpoints are remapped by :func:`checkpoint_filter_fn`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from ..layers import NumericsAware, TokenBN, TokenLinear, expand_time, wants_fast
from ..layers.attention import token_spike_attention
from ..layers.blocks import linear_bn, linear_bn_neuron
from ..layers.init import trunc_normal_
from ..layers.stems import SpikingPatchStem
from ..neurons import neuron_factory
from ._base import SpikingClassifier
from ._features import stem_feature_info
from .registry import CIFAR_MEAN, CIFAR_STD, cfg, register_model

# MultiStepLIFNode(tau=2.0, detach_reset=True) with SpikingJelly 0.0.0.0.12's Sigmoid(alpha=4) surrogate.
LIF_DEFAULTS = dict(tau=2.0, detach_reset=True)
DVS_LIF_DEFAULTS = dict(tau=1.5, detach_reset=True)  # ``tau_thr = 1.5`` in the official DVS models


class SpikingTokenizer(SpikingPatchStem):
    """Five conv3x3-BN stages (D/8, D/4, D/2, D, D): ``conv-BN`` on the input, then ``LIF [-> MaxPool] -> conv-BN``
    (the shared stem, :class:`~spikeformer.layers.stems.SpikingPatchStem`, with the official module names).

    The output is a BN output (not spikes); ``pool_stages`` (of 1..4) name the stages whose LIF is followed by a
    3x3/2 max-pool: all four on ImageNet and DVS (/16), the last two on CIFAR (/4).
    """

    def __init__(self, in_chans: int, embed_dim: int, neuron, pool_stages: Sequence[int] = (1, 2, 3, 4)):
        if any(not 1 <= int(i) <= 4 for i in pool_stages):
            raise SpikeformerError(f"pool_stages name tokenizer stages 1..4; got {tuple(pool_stages)}")
        # stage i's LIF follows the BatchNorm of stage i - 1: pooling "stage i" pools after 0-based stage i - 1
        super().__init__(in_chans, embed_dim, neuron, stages=5, pool_stages=[int(i) - 1 for i in pool_stages],
                         last_neuron=False, names="tokenizer")


class SpikingSelfAttention(NumericsAware, nn.Module):
    """Pre-activation SSA on tokens ``[T, B, N, D]``: ``LIF -> q/k/v (Linear-BN-LIF) -> SN(Q K^T V * s) ->
    Linear-BN``. The input LIF is the official ``proj_lif``; the output is a BN output."""

    def __init__(self, dim: int, num_heads: int, neuron, scale: float = 0.125):
        super().__init__()
        if dim % num_heads:
            raise SpikeformerError(f"embed_dim {dim} is not divisible by num_heads {num_heads}; pick a divisor")
        self.num_heads, self.scale = num_heads, scale
        self.in_lif = neuron()
        for n in ("q", "k", "v"):
            setattr(self, f"{n}_linear", TokenLinear(dim, dim, bias=False, official_op="conv1d"))
            setattr(self, f"{n}_bn", TokenBN(dim))
            setattr(self, f"{n}_lif", neuron())
        self.attn_lif = neuron(v_threshold=0.5)
        self.proj_linear = TokenLinear(dim, dim, official_op="conv1d")
        self.proj_bn = TokenBN(dim)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        x = self.in_lif(x)
        q = linear_bn_neuron(self.q_linear, self.q_bn, self.q_lif, x, sparse=True)
        k = linear_bn_neuron(self.k_linear, self.k_bn, self.k_lif, x, sparse=True)
        v = linear_bn_neuron(self.v_linear, self.v_bn, self.v_lif, x, sparse=True)
        x = token_spike_attention(q, k, v, self.num_heads, self.scale, fast=wants_fast(self, q))
        return linear_bn(self.proj_linear, self.proj_bn, self.attn_lif(x), sparse=True)


class MLP(NumericsAware, nn.Module):
    """``LIF -> Linear-BN -> LIF -> Linear-BN`` (the official 1x1 Conv2d layers, as TokenLinear on tokens)."""

    def __init__(self, dim: int, hidden: int, neuron):
        super().__init__()
        self.mlp1_lif = neuron()
        self.mlp1_linear = TokenLinear(dim, hidden, official_op="conv2d")
        self.mlp1_bn = TokenBN(hidden)
        self.mlp2_lif = neuron()
        self.mlp2_linear = TokenLinear(hidden, dim, official_op="conv2d")
        self.mlp2_bn = TokenBN(dim)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        # mlp1's BatchNorm feeds mlp2's LIF directly: one fused kernel on the fast path
        x = linear_bn_neuron(self.mlp1_linear, self.mlp1_bn, self.mlp2_lif, self.mlp1_lif(x), sparse=True, grid=grid)
        return linear_bn(self.mlp2_linear, self.mlp2_bn, x, grid, sparse=True)


class Block(nn.Module):
    """Spike-driven residual block: the stream carries BN outputs, each branch starts with a LIF."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, neuron, scale: float):
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads, neuron, scale)
        self.mlp = MLP(dim, int(dim * mlp_ratio), neuron)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        x = x + self.attn(x, grid)
        return x + self.mlp(x, grid)


VARIANTS = {
    "imagenet": dict(pool_stages=(1, 2, 3, 4), lif=LIF_DEFAULTS),
    "cifar": dict(pool_stages=(3, 4), lif=LIF_DEFAULTS),
    "dvs": dict(pool_stages=(1, 2, 3, 4), lif=DVS_LIF_DEFAULTS),
}


class Spikingformer(NumericsAware, SpikingClassifier):
    def __init__(
        self,
        variant: str = "imagenet",
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        T: int = 4,
        neuron: Any = "lif",
        scale: float = 0.125,
        img_size: int | None = None,  # accepted for timm compatibility; the network is size-agnostic
        pool_stages: Sequence[int] | None = None,  # which tokenizer stages (1..4) max-pool (default: the variant's)
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise SpikeformerError(f"unknown Spikingformer variant {variant!r}; choose one of {sorted(VARIANTS)}")
        v = VARIANTS[variant]
        make = neuron_factory(neuron, **v["lif"])
        self.variant, self.T, self.in_chans, self.num_classes = variant, T, in_chans, num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = SpikingTokenizer(
            in_chans, embed_dim, make, v["pool_stages"] if pool_stages is None else pool_stages
        )
        self.block = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, make, scale) for _ in range(depth))
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # features_only: the tokenizer's stages that end in a max-pool (the spikes of their LIF), then the last block
        self.feature_info, r = stem_feature_info(self.patch_embed)
        self.feature_info.append(dict(num_chs=embed_dim, reduction=r, module=f"block.{depth - 1}" if depth else
                                      "patch_embed"))
        # The official init touches only nn.Linear, i.e. the head; its 1x1 convs keep PyTorch's default init, which
        # is the same distribution as nn.Linear's default for our token-wise Linear layers.
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` -> token-mean features ``[T, B, D]``."""
        x = expand_time(x, self.T, self.in_chans)
        x = self.patch_embed(x)
        grid = tuple(x.shape[-2:])
        x = x.flatten(3).transpose(-1, -2)  # [T, B, N, D]
        for blk in self.block:
            x = blk(x, grid)
        if not wants_fast(self, x):
            # the stream is real-valued: sum over tokens along the official [T, B, C, N] layout (its bits)
            return x.transpose(-1, -2).contiguous().mean(-1)
        return x.mean(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features_per_step(x).mean(0))  # official: the time mean before the head


_TOKEN_LAYERS = ("q", "k", "v", "proj", "mlp1", "mlp2")


def checkpoint_filter_fn(state_dict: dict, model: Spikingformer) -> dict:
    """Map an official Spikingformer state_dict (ImageNet, CIFAR or DVS layout) onto ours.

    Renames the CIFAR tokenizer's ``block{i}_*`` to ``proj{i}_*`` (``block0_*`` to ``proj_*``) and the token
    projections ``*_conv`` to ``*_linear``, squeezing their Conv1d ``[D, D, 1]`` / Conv2d ``[4D, D, 1, 1]``
    kernels; drops the never-used ``norm1``/``norm2`` LayerNorms. Anything else is passed through unchanged, so a
    file of another model shows up as missing/unexpected keys when loading.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("block.") and (".norm1." in k or ".norm2." in k):
            continue
        if k.startswith("patch_embed.block"):
            stage, rest = k[len("patch_embed.block"):].split("_", 1)
            if stage.isdigit():
                k = f"patch_embed.proj{'' if stage == '0' else stage}_{rest}"
        elif k.startswith("block."):
            for n in _TOKEN_LAYERS:
                k = k.replace(f".{n}_conv.", f".{n}_linear.")
            if k.endswith("_linear.weight") and v.dim() > 2:
                v = v.flatten(1)
        out[k] = v
    return out


def _create(variant: str, **kwargs) -> Spikingformer:
    return Spikingformer(variant=variant, **kwargs)


_PAPER = ("Spikingformer: Spike-driven Residual Learning for Transformer-based Spiking Neural Network "
          "(arXiv 2304.11954)")
_PARAMS_NOTE = "paper_params_m counts the built model (the official code adds 4*D*depth unused LayerNorm parameters)"


def _imnet(top1, params):
    return cfg(input_size=(3, 224, 224), T=4, num_classes=1000, dataset="imagenet", published={"imagenet": top1},
               paper_params_m=params, paper=_PAPER, crop_pct=1.0, first_conv="patch_embed.proj_conv",
               notes=f"8 heads; {_PARAMS_NOTE}")


def _cifar(c10, c100, params, heads_note):
    return cfg(input_size=(3, 32, 32), T=4, num_classes=10, dataset="cifar10",
               published={"cifar10": c10, "cifar100": c100}, paper_params_m=params, paper=_PAPER,
               mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="patch_embed.proj_conv",
               notes=f"num_classes=100 for CIFAR-100 (the paper prints the CIFAR-10 count for both); {heads_note}; "
               + _PARAMS_NOTE)


_HEADS_384 = "12 heads, or 8 with num_classes=100 (official cifar10.yml / cifar100.yml)"

default_cfgs = {
    "spikingformer_8_384": _imnet(72.45, 16.81),
    "spikingformer_8_512": _imnet(74.79, 29.68),
    "spikingformer_8_768": _imnet(75.85, 66.34),
    "spikingformer_cifar_4_256": _cifar(94.77, 77.43, 4.15, "8 heads"),
    "spikingformer_cifar_2_384": _cifar(95.22, 78.34, 5.76, _HEADS_384),
    "spikingformer_cifar_4_384": _cifar(95.61, 79.09, 9.32, _HEADS_384 + "; 400 epochs give 95.81 / 79.21"),
    "spikingformer_dvs_2_256": cfg(
        input_size=(2, 128, 128), T=16, num_classes=10, dataset="cifar10-dvs",
        published={"cifar10-dvs": 81.3, "dvs128-gesture": 98.3}, paper_params_m=2.57, paper=_PAPER,
        mean=(0.0, 0.0), std=(1.0, 1.0), first_conv="patch_embed.proj_conv",
        notes="16 heads, LIF tau=1.5; T=16 (T=10: 79.9 / 96.2); num_classes=11 for DVS128 Gesture. "
        + _PARAMS_NOTE,
    ),
}


@register_model
def spikingformer_8_384(**kw):
    return _create("imagenet", embed_dim=384, depth=8, num_heads=8, **kw)


@register_model
def spikingformer_8_512(**kw):
    return _create("imagenet", embed_dim=512, depth=8, num_heads=8, **kw)


@register_model
def spikingformer_8_768(**kw):
    return _create("imagenet", embed_dim=768, depth=8, num_heads=8, **kw)


def _cifar_384_heads(kw: dict) -> dict:
    # cifar10.yml trains D=384 with 12 heads, cifar100.yml with 8: heads do not change the weights' shapes, so a
    # CIFAR-100 checkpoint would load into a 12-head model and silently compute something else.
    kw.setdefault("num_heads", 8 if kw.get("num_classes") == 100 else 12)
    return kw


@register_model
def spikingformer_cifar_4_256(**kw):
    kw.setdefault("num_heads", 8)
    return _create("cifar", embed_dim=256, depth=4, **kw)


@register_model
def spikingformer_cifar_2_384(**kw):
    return _create("cifar", embed_dim=384, depth=2, **_cifar_384_heads(kw))


@register_model
def spikingformer_cifar_4_384(**kw):
    return _create("cifar", embed_dim=384, depth=4, **_cifar_384_heads(kw))


@register_model
def spikingformer_dvs_2_256(**kw):
    kw.setdefault("in_chans", 2)
    kw.setdefault("num_heads", 16)
    return _create("dvs", embed_dim=256, depth=2, **kw)
