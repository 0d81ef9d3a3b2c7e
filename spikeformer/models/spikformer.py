"""Spikformer: "Spikformer: When Spiking Neural Network Meets Transformer" (Zhou et al., ICLR 2023).

Faithful to the official code (ZK-Zhou/spikformer) in its three variants:

* ``imagenet`` (``imagenet/model.py``): SPS with a max-pool after each of the four conv-BN-LIF stages, then a
  conv-BN-LIF relative position embedding added to the pooled spikes; q/k/v projections without bias.
* ``cifar`` (``cifar10/model.py``): max-pools only after the third and fourth stage (32 -> 8, 64 tokens);
  q/k/v/proj/MLP are ``nn.Linear`` with bias and every Linear starts from trunc_normal(0.02).
* ``dvs`` (``cifar10dvs/model.py``): like ``imagenet`` on 2-channel event frames; attention scale 0.25.

Spiking Self Attention (paper Eq. 12-15): ``SN(Q K^T V * s)`` with binary Q, K, V, s = 0.125 (0.25 on DVS) and an
attention LIF of threshold 0.5; residuals add spikes to spikes (SEW style), and the head is a Linear on the mean
over tokens and time. The LayerNorms, ``pos_embed`` and dropout the official code builds but never calls are not
built. Token-wise projections are :class:`~spikeformer.layers.TokenLinear` layers that remember the official operation
(``Conv1d``/``Conv2d`` 1x1 on ImageNet and DVS, ``nn.Linear`` on CIFAR): ``numerics="exact"`` runs exactly that
operation on the official layout (``[T*B, C, N]`` / ``[T*B, C, H, W]``, BatchNorm on the conv output), so the logits are
the official code's bit for bit; ``numerics="fast"`` runs the shared fast blocks (fused BatchNorm + LIF, compiled
spike attention, products over nonzero spikes, channels-last stem). Official checkpoints are remapped by
:func:`checkpoint_filter_fn` (Conv kernels squeezed to the Linear layout).
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from ..layers import NumericsAware, TokenBN, TokenLinear, expand_time, wants_fast
from ..layers.attention import token_spike_attention
from ..layers.blocks import add_residual, linear_bn_neuron, linear_bn_neurons
from ..layers.init import trunc_normal_
from ..layers.stems import SpikingPatchStem
from ..neurons import neuron_factory
from ._base import SpikingClassifier
from ._features import stem_feature_info
from .registry import CIFAR_MEAN, CIFAR_STD, cfg, register_model

LIF_DEFAULTS = dict(tau=2.0, detach_reset=True)  # MultiStepLIFNode(tau=2.0, detach_reset=True), Sigmoid(4)


class SPS(SpikingPatchStem):
    """Spiking Patch Splitting: four conv3x3-BN-LIF stages (D/8, D/4, D/2, D), max-pools after ``pool_stages``, and
    the relative position embedding ``x + LIF(BN(conv3x3(x)))`` on the spikes (the shared stem,
    :class:`~spikeformer.layers.stems.SpikingPatchStem`, with the official module names)."""

    def __init__(self, in_chans: int, embed_dim: int, neuron, pool_stages: Sequence[int] = (0, 1, 2, 3)):
        # Under bf16 autocast the first two stages stay fp32: their rounding flips the most spikes, and early flips
        # spread downstream (agreement with fp32 per choice: benchmarks/RESULTS.md, bench_bf16_agreement.py). The
        # relative position convolution reads pooled spikes (about 20 % nonzero): the table-lookup product pays there
        super().__init__(in_chans, embed_dim, neuron, stages=4, pool_stages=pool_stages, rpe="spikes", names="sps",
                         fp32_stages=2, rpe_spikes_in=True)


class SSA(NumericsAware, nn.Module):
    """Spiking Self Attention on tokens ``[T, B, N, D]``."""

    def __init__(self, dim: int, num_heads: int, neuron, scale: float = 0.125, qkv_bias: bool = False,
                 bn_transposed: bool = False, op: str = "linear"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.scale = num_heads, scale
        for n in ("q", "k", "v"):
            setattr(self, f"{n}_linear", TokenLinear(dim, dim, bias=qkv_bias, official_op=op))
            setattr(self, f"{n}_bn", TokenBN(dim, transposed=bn_transposed))
            setattr(self, f"{n}_lif", neuron())
        self.attn_lif = neuron(v_threshold=0.5)
        self.proj_linear = TokenLinear(dim, dim, official_op=op)
        self.proj_bn = TokenBN(dim, transposed=bn_transposed)
        self.proj_lif = neuron()

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self._attend(x, grid)[1]

    def residual(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """``x + self(x)``, the sum taken on the alias of ``x`` that q/k/v return on the fast bf16 path
        (:func:`~spikeformer.layers.blocks.linear_bn_neurons`), so its gradient joins theirs inside their GEMMs."""
        return add_residual(self, x, grid, self._attend)

    def _attend(self, x: torch.Tensor, grid=None, keep_input: bool = False):
        q, k, v, *kept = linear_bn_neurons([(self.q_linear, self.q_bn, self.q_lif), (self.k_linear, self.k_bn,
                                            self.k_lif), (self.v_linear, self.v_bn, self.v_lif)], x, sparse=True,
                                           keep_input=keep_input)
        a = self.attn_lif(token_spike_attention(q, k, v, self.num_heads, self.scale, fast=wants_fast(self, q)))
        return (kept[0] if kept else x), linear_bn_neuron(self.proj_linear, self.proj_bn, self.proj_lif, a, sparse=True)


class MLP(NumericsAware, nn.Module):
    """Linear-BN-LIF twice (the official 1x1 convolutions or Linear layers, as TokenLinear on tokens)."""

    def __init__(self, dim: int, hidden: int, neuron, bn_transposed: bool = False, op: str = "linear"):
        super().__init__()
        self.fc1_linear = TokenLinear(dim, hidden, official_op=op)
        self.fc1_bn = TokenBN(hidden, transposed=bn_transposed)
        self.fc1_lif = neuron()
        self.fc2_linear = TokenLinear(hidden, dim, official_op=op)
        self.fc2_bn = TokenBN(dim, transposed=bn_transposed)
        self.fc2_lif = neuron()

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self._mlp(x, grid)[1]

    def residual(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """``x + self(x)`` (see :meth:`SSA.residual`)."""
        return add_residual(self, x, grid, self._mlp)

    def _mlp(self, x: torch.Tensor, grid, keep_input: bool = False):
        h, *kept = linear_bn_neurons([(self.fc1_linear, self.fc1_bn, self.fc1_lif)], x, sparse=True, grid=grid,
                                     keep_input=keep_input)
        return (kept[0] if kept else x), linear_bn_neuron(self.fc2_linear, self.fc2_bn, self.fc2_lif, h, sparse=True,
                                                          grid=grid)


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, neuron, scale, qkv_bias, bn_transposed=False, attn_op="linear",
                 mlp_op="linear"):
        super().__init__()
        self.attn = SSA(dim, num_heads, neuron, scale, qkv_bias, bn_transposed, attn_op)
        self.mlp = MLP(dim, int(dim * mlp_ratio), neuron, bn_transposed, mlp_op)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        x = self.attn.residual(x, grid)  # x + attn(x)
        return self.mlp.residual(x, grid)  # x + mlp(x)


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module):
    """Recomputing a block in backward must not update BatchNorm running statistics a second time."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
            m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def _recompute_contexts(block: nn.Module):
    return contextlib.nullcontext(), _frozen_bn_stats(block)


VARIANTS = {
    # bn_transposed: the official CIFAR code applies BatchNorm1d to transposed tokens; match its rounding exactly.
    # attn_op / mlp_op: the official operation of the token projections (imagenet/model.py: Conv1d attention, Conv2d
    # MLP; cifar10/model.py: nn.Linear; cifar10dvs/model.py: Conv1d everywhere)
    "imagenet": dict(pool_stages=(0, 1, 2, 3), scale=0.125, qkv_bias=False, init_all_linear=False, bn_transposed=False,
                     attn_op="conv1d", mlp_op="conv2d"),
    "cifar": dict(pool_stages=(2, 3), scale=0.125, qkv_bias=True, init_all_linear=True, bn_transposed=True,
                  attn_op="linear", mlp_op="linear"),
    "dvs": dict(pool_stages=(0, 1, 2, 3), scale=0.25, qkv_bias=False, init_all_linear=False, bn_transposed=False,
                attn_op="conv1d", mlp_op="conv1d"),
}


class Spikformer(SpikingClassifier):
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
        img_size: int | None = None,  # accepted for timm compatibility; the network is size-agnostic
        pool_stages: Sequence[int] | None = None,  # which SPS stages end in a max-pool (default: the variant's)
        checkpoint_blocks: bool = False,  # recompute each block in backward: less memory, ~1/3 more compute
    ):
        super().__init__()
        v = dict(VARIANTS[variant])
        if pool_stages is not None:
            v["pool_stages"] = tuple(pool_stages)
        make = neuron_factory(neuron, **LIF_DEFAULTS)
        self.variant, self.T, self.in_chans, self.num_classes = variant, T, in_chans, num_classes
        self.checkpoint_blocks = bool(checkpoint_blocks)
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = SPS(in_chans, embed_dim, make, v["pool_stages"])
        self.block = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, make, v["scale"], v["qkv_bias"], v["bn_transposed"], v["attn_op"],
                  v["mlp_op"])
            for _ in range(depth)
        )
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # features_only: the stem's stages that end in a max-pool, then the last block's tokens
        self.feature_info, r = stem_feature_info(self.patch_embed)
        self.feature_info.append(dict(num_chs=embed_dim, reduction=r, module=f"block.{depth - 1}" if depth else
                                      "patch_embed"))
        for m in self.modules():
            if isinstance(m, nn.Linear) and (v["init_all_linear"] or m is self.head):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` -> token-mean features ``[T, B, D]``."""
        x = expand_time(x, self.T, self.in_chans)
        x = self.patch_embed(x)
        grid = tuple(x.shape[-2:])
        x = x.flatten(3).transpose(-1, -2)  # [T, B, N, D]
        for blk in self.block:
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, grid, use_reentrant=False, context_fn=lambda b=blk: _recompute_contexts(b))
            else:
                x = blk(x, grid)
        return x.mean(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features_per_step(x).mean(0))  # official: the time mean before the head


def checkpoint_filter_fn(state_dict: dict, model: Spikformer) -> dict:
    """Map an official Spikformer state_dict (any of the three variants) onto ours.

    Renames ``*_conv`` token projections to ``*_linear`` and squeezes their Conv1d ``[D, D, 1]`` / Conv2d
    ``[D, D, 1, 1]`` kernels; drops the never-used ``norm1``/``norm2``/``norm`` LayerNorms and ``pos_embed``.
    """
    out = {}
    for k, v in state_dict.items():
        if k == "pos_embed" or k.startswith("norm.") or ".norm1." in k or ".norm2." in k:
            continue
        if k.startswith("block."):
            for n in ("q", "k", "v", "proj", "fc1", "fc2"):
                k = k.replace(f".{n}_conv.", f".{n}_linear.")
            if k.endswith("_linear.weight") and v.dim() > 2:
                v = v.flatten(1)
        out[k] = v
    return out


def _create(variant: str, **kwargs) -> Spikformer:
    return Spikformer(variant=variant, **kwargs)


_PAPER = "Spikformer: When Spiking Neural Network Meets Transformer (ICLR 2023)"


def _imnet(top1, params):
    return cfg(input_size=(3, 224, 224), T=4, num_classes=1000, dataset="imagenet", published={"imagenet": top1},
               paper_params_m=params, paper=_PAPER, crop_pct=1.0, first_conv="patch_embed.proj_conv")


def _cifar(c10, c100, params):
    return cfg(input_size=(3, 32, 32), T=4, num_classes=10, dataset="cifar10",
               published={"cifar10": c10, "cifar100": c100}, paper_params_m=params, paper=_PAPER,
               mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="patch_embed.proj_conv",
               notes="num_classes=100 for CIFAR-100 (same published parameter count)")


default_cfgs = {
    "spikformer_8_384": _imnet(70.24, 16.81),
    "spikformer_6_512": _imnet(72.46, 23.37),
    "spikformer_8_512": _imnet(73.38, 29.68),
    "spikformer_10_512": _imnet(73.68, 36.01),
    "spikformer_8_768": _imnet(74.81, 66.34),
    "spikformer_cifar_4_256": _cifar(93.94, 75.96, 4.15),
    "spikformer_cifar_2_384": _cifar(94.80, 76.95, 5.76),
    "spikformer_cifar_4_384": _cifar(95.19, 77.86, 9.32),
    "spikformer_dvs_2_256": cfg(
        input_size=(2, 128, 128), T=16, num_classes=10, dataset="cifar10-dvs",
        published={"cifar10-dvs": 80.9, "dvs128-gesture": 98.3}, paper_params_m=2.59, paper=_PAPER,
        mean=(0.0, 0.0), std=(1.0, 1.0), first_conv="patch_embed.proj_conv",
        notes="T=16; num_classes=11 for DVS128 Gesture. The paper's 2.59M counts the official code's unused "
        "pos_embed and LayerNorms; the model built here has 2.57M",
    ),
    "spikformer_digits_1_64": cfg(
        input_size=(1, 16, 16), T=4, num_classes=10, dataset="digits", paper=_PAPER,
        mean=(0.0,), std=(1.0,), first_conv="patch_embed.proj_conv",
        notes="the embedded default: CIFAR-style Spikformer sized for scikit-learn's 8x8 digits upsampled to 16x16",
    ),
    "spikformer_dvs_digits_1_64": cfg(
        input_size=(2, 32, 32), T=8, num_classes=10, dataset="events-digits", paper=_PAPER,
        mean=(0.0, 0.0), std=(1.0, 1.0), first_conv="patch_embed.proj_conv",
        notes="DVS-variant Spikformer sized for the emulated-DVS digits (2x32x32 event frames, 16 tokens)",
    ),
}


@register_model
def spikformer_8_384(**kw):
    return _create("imagenet", embed_dim=384, depth=8, num_heads=8, **kw)


@register_model
def spikformer_6_512(**kw):
    return _create("imagenet", embed_dim=512, depth=6, num_heads=8, **kw)


@register_model
def spikformer_8_512(**kw):
    return _create("imagenet", embed_dim=512, depth=8, num_heads=8, **kw)


@register_model
def spikformer_10_512(**kw):
    return _create("imagenet", embed_dim=512, depth=10, num_heads=8, **kw)


@register_model
def spikformer_8_768(**kw):
    return _create("imagenet", embed_dim=768, depth=8, num_heads=8, **kw)


@register_model
def spikformer_cifar_4_256(**kw):
    return _create("cifar", embed_dim=256, depth=4, num_heads=8, **kw)


@register_model
def spikformer_cifar_2_384(**kw):
    return _create("cifar", embed_dim=384, depth=2, num_heads=12, **kw)


@register_model
def spikformer_cifar_4_384(**kw):
    return _create("cifar", embed_dim=384, depth=4, num_heads=12, **kw)


@register_model
def spikformer_dvs_2_256(**kw):
    kw.setdefault("in_chans", 2)
    return _create("dvs", embed_dim=256, depth=2, num_heads=16, **kw)


@register_model
def spikformer_digits_1_64(**kw):
    kw.setdefault("in_chans", 1)
    return _create("cifar", embed_dim=64, depth=1, num_heads=4, **kw)


@register_model
def spikformer_dvs_digits_1_64(**kw):
    kw.setdefault("in_chans", 2)
    kw.setdefault("pool_stages", (1, 2, 3))
    return _create("dvs", embed_dim=64, depth=1, num_heads=4, **kw)
