"""QKFormer: "QKFormer: Hierarchical Spiking Transformer using Q-K Attention" (Zhou et al., NeurIPS 2024).

Faithful to the official code (zhouchenlin2096/QKFormer) in its three variants:

* ``imagenet`` (``imagenet/qkformer.py``, HST-10-E): three stages of widths E/4, E/2, E with 1, 2 and depth-3
  blocks on a 56/28/14 token grid at 224x224 (reductions 4, 8, 16); the same head count in every stage.
* ``cifar`` (``cifar10/model.py``, ``cifar100/model.py``): the same three stages, 1, 1 and depth-2 blocks, but the
  first patch embedding does not downsample (32/16/8 grid at 32x32) and the stage embeddings pool after their
  second convolution; the official constructor forces 8 heads.
* ``dvs`` (``cifar10-dvs/model.py``, ``dvs128-gesture/model.py``): two stages of widths E/2 and E (one Q-K block,
  one SSA block) after a four-convolution patch embedding that downsamples 8x (16/8 grid at 128x128); the official
  constructor forces 16 heads. CIFAR10-DVS uses mlp_ratio 1, DVS128 Gesture mlp_ratio 4.

Pieces (paper Sec. 3):

* **Q-K Token Attention** (module ``tssa``): binary Q and K from 1x1 projections + BN + LIF; per head and
  token the sum of the head's Q channels drives an attention LIF of threshold 0.5, whose spike masks the token's K
  (``X' = SN(sum_i Q_i) * K``); then projection + BN + LIF. No V, no scale, no softmax. Stages 1 and 2.
* **Spiking Self Attention** in the last stage (module ``attn``; ``ssa`` in the CIFAR/DVS files): Spikformer's
  ``SN_0.5(Q K^T V * 0.125)`` with binary Q, K, V, then projection + BN + LIF.
* **Spiking Patch Embedding with Deformed Shortcut** (SPEDS): conv3x3-BN(-maxpool)-LIF stages and a
  1x1 strided conv-BN-LIF shortcut from the input (or an early stage), added: :class:`SPEDS`.
* **Residuals add spikes** (activation before addition): every sub-block ends in a LIF whose spikes are added to the
  stream, so projections read small non-negative integers, not strictly binary inputs. The head is a Linear on the
  mean over tokens and time of the stream (no neuron before it).

Only Q-K token attention exists in the official code; the paper's Q-K channel attention (QKCA) is not built here.

Numerics: ``"exact"`` runs the official operations on the official layouts (1x1 ``Conv1d`` on ``[T*B, C, N]`` for the
attention projections, 1x1 ``Conv2d`` on ``[T*B, C, H, W]`` for the MLP, BatchNorm over the same views, NCHW patch
embeddings), so the logits equal the official code's bit for bit; ``"fast"`` runs the shared fast blocks
(channels-last frames, token GEMMs, BatchNorm + LIF fused, products over nonzero spikes, the compiled spike
attention and max-pool). Token projections are :class:`~spikeformer.layers.TokenLinear` (weights ``[out, in]``):
official Conv kernels are squeezed by :func:`checkpoint_filter_fn`, which also renames the CIFAR/DVS module names
(``ssa`` -> ``attn``, ``mlp1_*``/``mlp2_*`` -> ``fc1_*``/``fc2_*``).

Differences from the official code, all outside what a checkpoint or a single sample sees:

* **Batch coupling.** The official SSA applies its ``proj_lif`` to a ``[T*B, C, N]`` tensor, so that neuron's
  membrane runs over T*B steps through the samples of the batch: a sample's logits depend on the other samples.
  Here every sample is computed alone; its logits equal the official code run on that sample alone (batch 1).
* The official maps must be square (the SSA reshapes ``[C, H, W]`` to ``[C, W, H]``) with sides divisible by the
  downsampling; this implementation takes any size (max-pools give ``ceil(H / 2)``).
* The never-used ``qkv_mp`` max-pool, the ``drop_path`` argument (never applied) and ``_get_pos_embed`` are not built.
* DVS frames are ``[T, B, 2, H, W]`` (time first, the package convention); the official DVS models take
  ``[B, T, 2, H, W]``.

Parameter counts equal the official code's: 16,473,688 / 29,079,336 / 64,962,760 (HST-10-384/512/768),
6,706,234 (CIFAR-10) / 6,740,884 (CIFAR-100) and 1,504,138 (CIFAR10-DVS, the paper's 1.50M). The DVS128 Gesture
model as coded (``dvs128-gesture/model.py``: mlp_ratio 4, 11 classes) has 1,999,371 parameters, while the paper
lists 1.50M for both DVS datasets: the paper's number is the CIFAR10-DVS model's (mlp_ratio 1); which of the two
produced the published 98.6% is not stated. ``qkformer_dvs128_2_256`` builds the model as coded.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from ..layers import NumericsAware, TokenBN, TokenLinear, expand_time, seq_apply, wants_fast
from ..layers.attention import token_spike_attention
from ..layers.blocks import channels_last, conv_bn, conv_bn_neuron, linear_bn_neuron
from ..layers.init import trunc_normal_
from ..layers.time import frame_map
from ..layers.pool import max_pool
from ..neurons import neuron_factory
from ._base import SpikingClassifier
from .registry import CIFAR_MEAN, CIFAR_STD, cfg, register_model

LIF_DEFAULTS = dict(tau=2.0, detach_reset=True)  # MultiStepLIFNode(tau=2.0, detach_reset=True), Sigmoid(4)
SSA_SCALE = 0.125  # the official constant for every stage and width (not 1/sqrt(d))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """Frames ``[T, B, C, H, W]`` -> tokens ``[T, B, N, C]`` (a view: NCHW frames give the official ``[T, B, C, N]``
    memory, channels-last frames contiguous tokens)."""
    return x.flatten(3).transpose(-1, -2)


def _frames(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens ``[T, B, N, C]`` -> frames ``[T, B, C, H, W]`` (a view)."""
    return x.transpose(-1, -2).unflatten(-1, grid)


class SPEDS(NumericsAware, nn.Module):
    """Spiking Patch Embedding with Deformed Shortcut on frames ``[T, B, C, H, W]``.

    A chain of conv3x3 (no bias) -> BN -> [3x3/2 max-pool] -> LIF stages of ``widths``, plus a shortcut
    ``LIF(BN(conv1x1(s)))`` whose stride matches the pools after its source ``s`` (the input if
    ``shortcut_from < 0``, else the spikes of stage ``shortcut_from``); the two spike maps are added. ``names`` are
    the official prefixes of each stage's modules (``proj_conv``/``proj_bn``/``proj_lif`` for ``"proj"``); the
    shortcut is ``proj_res_conv``/``proj_res_bn``/``proj_res_lif``. Modules are built in the official order.
    """

    def __init__(self, in_chans: int, widths: Sequence[int], neuron, names: Sequence[str],
                 pool_after: Sequence[int] = (), shortcut_from: int = -1, first_fp32: bool = False,
                 stream_in: bool = False):
        super().__init__()
        if len(names) != len(widths):
            raise ValueError("one name per stage")
        self.names, self.pool_after = tuple(names), frozenset(pool_after)
        self.shortcut_from, self.first_fp32 = shortcut_from, first_fp32
        # stream_in: x is the residual stream of summed spikes (small integers, 12-16 % nonzero), whose convolutions
        # may run over its nonzeros on the fast path as those of spikes do; else x is an image
        self.stream_in = stream_in
        dims = (in_chans, *widths)
        for i, n in enumerate(self.names):
            setattr(self, f"{n}_conv", nn.Conv2d(dims[i], dims[i + 1], 3, 1, 1, bias=False))
            setattr(self, f"{n}_bn", nn.BatchNorm2d(dims[i + 1]))
            setattr(self, f"{n}_lif", neuron())
        stride = 2 ** sum(1 for i in self.pool_after if i > shortcut_from)
        self.proj_res_conv = nn.Conv2d(dims[shortcut_from + 1], widths[-1], 1, stride, 0, bias=False)
        self.proj_res_bn = nn.BatchNorm2d(widths[-1])
        self.proj_res_lif = neuron()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        x = channels_last(x) if fast else x.contiguous()  # exact: the official NCHW convolutions
        src = x
        for i, n in enumerate(self.names):
            conv, bn, lif = getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn"), getattr(self, f"{n}_lif")
            spikes_in = i > 0 or self.stream_in  # stage 0 reads the image or the integer-valued stream
            fp32 = i == 0 and self.first_fp32 and torch.is_autocast_enabled(x.device.type)
            # under autocast the image convolution stays fp32: its rounding flips the most spikes
            with torch.autocast(x.device.type, enabled=False) if fp32 else contextlib.nullcontext():
                x = x.float() if fp32 else x
                if i in self.pool_after:  # conv -> BN -> max-pool -> LIF
                    z = conv_bn(conv, bn, x, spikes_in, fast)
                    pool = functools.partial(max_pool, self.pool)
                    x = lif(frame_map(pool, z) if fast else seq_apply(pool, z))
                else:
                    x = conv_bn_neuron(conv, bn, lif, x, spikes_in, fast)
            if i == self.shortcut_from:
                src = x
        res = conv_bn_neuron(self.proj_res_conv, self.proj_res_bn, self.proj_res_lif, src,
                             spikes_in=self.shortcut_from >= 0 or self.stream_in, fast=fast)
        return x + res


class QKTokenAttention(NumericsAware, nn.Module):
    """Q-K Token Attention (official ``Token_QK_Attention``) on tokens ``[T, B, N, C]``."""

    def __init__(self, dim: int, num_heads: int, neuron):
        super().__init__()
        if dim % num_heads:
            raise SpikeformerError(f"stage width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_conv = TokenLinear(dim, dim, bias=False, official_op="conv1d")
        self.q_bn = TokenBN(dim)
        self.q_lif = neuron()
        self.k_conv = TokenLinear(dim, dim, bias=False, official_op="conv1d")
        self.k_bn = TokenBN(dim)
        self.k_lif = neuron()
        self.attn_lif = neuron(v_threshold=0.5)
        self.proj_conv = TokenLinear(dim, dim, official_op="conv1d")
        self.proj_bn = TokenBN(dim)
        self.proj_lif = neuron()

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        h = self.num_heads
        q = linear_bn_neuron(self.q_conv, self.q_bn, self.q_lif, x, sparse=True)
        k = linear_bn_neuron(self.k_conv, self.k_bn, self.k_lif, x, sparse=True)
        # A_t = SN(sum of the head's Q channels) per token: integer sums, exact in any order
        a = self.attn_lif(q.unflatten(-1, (h, -1)).sum(-1, keepdim=True))  # [T, B, N, h, 1]
        y = (k.unflatten(-1, (h, -1)) * a).flatten(-2)
        return linear_bn_neuron(self.proj_conv, self.proj_bn, self.proj_lif, y.contiguous(), sparse=True)


class SpikingSelfAttention(NumericsAware, nn.Module):
    """Spiking Self Attention (official ``Spiking_Self_Attention``, scale 0.125) on tokens ``[T, B, N, C]``."""

    def __init__(self, dim: int, num_heads: int, neuron):
        super().__init__()
        if dim % num_heads:
            raise SpikeformerError(f"stage width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        for n in ("q", "k", "v"):
            setattr(self, f"{n}_conv", TokenLinear(dim, dim, bias=False, official_op="conv1d"))
            setattr(self, f"{n}_bn", TokenBN(dim))
            setattr(self, f"{n}_lif", neuron())
        self.attn_lif = neuron(v_threshold=0.5)
        self.proj_conv = TokenLinear(dim, dim, official_op="conv1d")
        self.proj_bn = TokenBN(dim)
        self.proj_lif = neuron()

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        q = linear_bn_neuron(self.q_conv, self.q_bn, self.q_lif, x, sparse=True)
        k = linear_bn_neuron(self.k_conv, self.k_bn, self.k_lif, x, sparse=True)
        v = linear_bn_neuron(self.v_conv, self.v_bn, self.v_lif, x, sparse=True)
        y = self.attn_lif(token_spike_attention(q, k, v, self.num_heads, SSA_SCALE, fast=wants_fast(self, q)))
        # per sample over T steps; the official proj_lif runs over T*B steps (see the module docstring)
        return linear_bn_neuron(self.proj_conv, self.proj_bn, self.proj_lif, y, sparse=True)


class MLP(NumericsAware, nn.Module):
    """Two 1x1 conv (official ``Conv2d``, with bias) -> BN -> LIF layers on tokens ``[T, B, N, C]``."""

    def __init__(self, dim: int, hidden: int, neuron):
        super().__init__()
        self.fc1_conv = TokenLinear(dim, hidden, official_op="conv2d")
        self.fc1_bn = TokenBN(hidden)
        self.fc1_lif = neuron()
        self.fc2_conv = TokenLinear(hidden, dim, official_op="conv2d")
        self.fc2_bn = TokenBN(dim)
        self.fc2_lif = neuron()

    def forward(self, x: torch.Tensor, grid) -> torch.Tensor:
        x = linear_bn_neuron(self.fc1_conv, self.fc1_bn, self.fc1_lif, x, sparse=True, grid=grid)
        return linear_bn_neuron(self.fc2_conv, self.fc2_bn, self.fc2_lif, x, sparse=True, grid=grid)


class QKBlock(nn.Module):
    """Official ``TokenSpikingTransformer``: ``x + QKTA(x)``, then ``x + MLP(x)``, on frames."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, neuron):
        super().__init__()
        self.tssa = QKTokenAttention(dim, num_heads, neuron)
        self.mlp = MLP(dim, int(dim * mlp_ratio), neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(x.shape[-2:])
        t = _tokens(x)
        t = t + self.tssa(t, grid)
        return _frames(t + self.mlp(t, grid), grid)


class SSABlock(nn.Module):
    """Official ``SpikingTransformer``: ``x + SSA(x)``, then ``x + MLP(x)``, on frames."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, neuron):
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads, neuron)
        self.mlp = MLP(dim, int(dim * mlp_ratio), neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(x.shape[-2:])
        t = _tokens(x)
        t = t + self.attn(t, grid)
        return _frames(t + self.mlp(t, grid), grid)


def _layout(variant: str, embed_dim: int, depth: int):
    """Per stage ``(width, blocks, block class, reduction)`` and the patch embedding arguments, as coded."""
    E = embed_dim
    if variant == "imagenet":
        stages = [(E // 4, 1, QKBlock, 4), (E // 2, 2, QKBlock, 8), (E, depth - 3, SSABlock, 16)]
        first = dict(widths=(E // 8, E // 4, E // 4), names=("proj", "proj1", "proj2"), pool_after=(0, 1),
                     shortcut_from=0)
        later = dict(names=("proj3", "proj4"), pool_after=(0,))
    elif variant == "cifar":
        stages = [(E // 4, 1, QKBlock, 1), (E // 2, 1, QKBlock, 2), (E, depth - 2, SSABlock, 4)]
        first = dict(widths=(E // 8, E // 4), names=("proj", "proj1"), pool_after=(), shortcut_from=0)
        later = dict(names=("proj3", "proj4"), pool_after=(1,))
    elif variant == "dvs":
        stages = [(E // 2, 1, QKBlock, 8), (E, depth - 1, SSABlock, 16)]
        first = dict(widths=(E // 16, E // 8, E // 4, E // 2), names=("proj", "proj1", "proj2", "proj3"),
                     pool_after=(1, 2, 3), shortcut_from=1)
        later = dict(names=("proj", "proj4"), pool_after=(1,))
    else:
        raise SpikeformerError(f"unknown QKFormer variant {variant!r}; choose 'imagenet', 'cifar' or 'dvs'")
    if min(s[1] for s in stages) < 1:
        raise SpikeformerError(f"depth {depth} is too small for the {variant} layout (blocks per stage "
                               f"{[s[1] for s in stages]})")
    return stages, first, later


class QKFormer(SpikingClassifier):
    """Hierarchical Spiking Transformer (HST) with Q-K attention; see the module docstring for the variants.

    ``depth`` counts all blocks (HST-10 = 1 + 2 + 7 on ImageNet; CIFAR 4 = 1 + 1 + 2; DVS 2 = 1 + 1) and
    ``embed_dim`` is the last stage's width. ``feature_info`` names the stage modules whose outputs are the
    per-stage maps ``[T, B, C, H, W]`` (timm's convention).
    """

    def __init__(
        self,
        variant: str = "imagenet",
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 10,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        T: int = 4,
        neuron: Any = "lif",
        img_size: int | None = None,  # accepted for timm compatibility; the network is size-agnostic
    ):
        super().__init__()
        stages, first, later = _layout(variant, embed_dim, depth)
        if embed_dim % 16:
            raise SpikeformerError(f"embed_dim must be a multiple of 16 (the patch embeddings use E/16..E); "
                                   f"got {embed_dim}")
        make = neuron_factory(neuron, **LIF_DEFAULTS)
        self.variant, self.T, self.in_chans, self.num_classes = variant, T, in_chans, num_classes
        self.embed_dim = self.num_features = embed_dim
        self.feature_info = []
        prev = in_chans
        # official construction order: embedding then blocks, stage by stage (seeded initialisations match)
        for i, (dim, blocks, block, reduction) in enumerate(stages, start=1):
            if i == 1:
                pe = SPEDS(in_chans, first["widths"], make, first["names"], first["pool_after"],
                           first["shortcut_from"], first_fp32=True)
            else:
                pe = SPEDS(prev, (dim, dim), make, later["names"], later["pool_after"], shortcut_from=-1,
                           stream_in=True)
            self.add_module(f"patch_embed{i}", pe)
            self.add_module(f"stage{i}", nn.Sequential(*(block(dim, num_heads, mlp_ratio, make)
                                                         for _ in range(blocks))))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stage{i}"))
            prev = dim
        self.num_stages = len(stages)
        if variant == "dvs":  # two stages only: the stem's full- and half-resolution spikes are levels too
            w = first["widths"]
            self.feature_info[:0] = [dict(num_chs=w[0], reduction=1, module="patch_embed1.proj_lif"),
                                     dict(num_chs=w[1], reduction=2, module="patch_embed1.proj1_lif")]
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):  # official _init_weights: trunc_normal(0.02) on nn.Linear (the head)
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` -> each stage's output ``[T, B, C_i, H_i, W_i]``
        (integer-valued spike sums)."""
        x = expand_time(x, self.T, self.in_chans)
        out = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{i}")(getattr(self, f"patch_embed{i}")(x))
            out.append(x)
        return out

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Token-mean features ``[T, B, D]`` of the last stage (the official ``forward_features``)."""
        return _tokens(self.forward_stages(x)[-1]).mean(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features_per_step(x).mean(0))  # official: the time mean before the head


_RENAMES = ((".ssa.", ".attn."), (".mlp.mlp1_", ".mlp.fc1_"), (".mlp.mlp2_", ".mlp.fc2_"))
_TOKEN_PROJ = tuple(f".{a}.{n}_conv.weight" for a in ("tssa", "attn") for n in ("q", "k", "v", "proj")) + (
    ".mlp.fc1_conv.weight", ".mlp.fc2_conv.weight")


def checkpoint_filter_fn(state_dict: dict, model: QKFormer) -> dict:
    """Map an official QKFormer state_dict (ImageNet, CIFAR or DVS file) onto ours.

    Renames the CIFAR/DVS ``ssa`` (stage-3 attention) to ``attn`` and ``mlp1_*``/``mlp2_*`` to ``fc1_*``/``fc2_*`` (the
    ImageNet names), and squeezes the Conv1d ``[D, D, 1]`` / Conv2d ``[D, D, 1, 1]`` kernels of the token
    projections to the Linear layout. Every other key is the official one.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("stage"):
            for a, b in _RENAMES:
                k = k.replace(a, b)
            if k.endswith(_TOKEN_PROJ) and v.dim() > 2:
                v = v.flatten(1)
        out[k] = v
    return out


def _create(variant: str, kw: dict, **defaults) -> QKFormer:
    """The configuration's ``defaults``, any of them overridden by the caller's ``kw``."""
    return QKFormer(variant=variant, **{**defaults, **kw})


_PAPER = "QKFormer: Hierarchical Spiking Transformer using Q-K Attention (NeurIPS 2024)"


def _imnet(top1, params, notes=""):
    return cfg(input_size=(3, 224, 224), T=4, num_classes=1000, dataset="imagenet", published={"imagenet": top1},
               paper_params_m=params, paper=_PAPER, crop_pct=0.875, interpolation="bicubic",
               first_conv="patch_embed1.proj_conv", notes=notes)


_DVS_NOTE = ("event frames [T, B, 2, 128, 128] (SpikingJelly frames_number=T, split_by='number'), T=16 as "
             "published; the official model takes [B, T, ...]")

default_cfgs = {
    "qkformer_10_384": _imnet(78.80, 16.47),
    "qkformer_10_512": _imnet(82.04, 29.08),
    "qkformer_10_768": _imnet(
        84.22, 64.96,
        notes="85.25% at 288x288 and 85.65% at 384x384 (crop_pct 1.0) with the same architecture (paper Tab. 2, "
        "official README); 81.69% at T=1"),
    "qkformer_cifar_4_384": cfg(
        input_size=(3, 32, 32), T=4, num_classes=10, dataset="cifar10",
        published={"cifar10": 96.18, "cifar100": 81.15}, paper_params_m=6.74, paper=_PAPER,
        mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="patch_embed1.proj_conv",
        notes="num_classes=100 for CIFAR-100. The paper's 6.74M is the CIFAR-100 model (6,740,884); the CIFAR-10 "
        "model has 6,706,234",
    ),
    "qkformer_dvs_2_256": cfg(
        input_size=(2, 128, 128), T=16, num_classes=10, dataset="cifar10-dvs",
        published={"cifar10-dvs": 84.0}, paper_params_m=1.50, paper=_PAPER, mean=(0.0, 0.0), std=(1.0, 1.0),
        first_conv="patch_embed1.proj_conv", notes="CIFAR10-DVS model as coded (mlp_ratio 1); " + _DVS_NOTE,
    ),
    "qkformer_dvs128_2_256": cfg(
        input_size=(2, 128, 128), T=16, num_classes=11, dataset="dvs128-gesture",
        published={"dvs128-gesture": 98.6}, paper_params_m=1.50, paper=_PAPER, mean=(0.0, 0.0), std=(1.0, 1.0),
        first_conv="patch_embed1.proj_conv",
        notes="DVS128 Gesture model as coded (dvs128-gesture/model.py: mlp_ratio 4, 1,999,371 parameters); the paper "
        "prints 1.50M, the CIFAR10-DVS model's count. " + _DVS_NOTE,
    ),
    "qkformer_digits": cfg(
        input_size=(1, 16, 16), T=4, num_classes=10, dataset="digits", paper=_PAPER,
        mean=(0.0,), std=(1.0,), first_conv="patch_embed1.proj_conv",
        notes="CIFAR-layout QKFormer sized for the embedded 1x16x16 digits (stages 16x16 / 8x8 / 4x4)",
    ),
}


@register_model
def qkformer_10_384(**kw):
    return _create("imagenet", kw, embed_dim=384, depth=10, num_heads=6)


@register_model
def qkformer_10_512(**kw):
    return _create("imagenet", kw, embed_dim=512, depth=10, num_heads=8)


@register_model
def qkformer_10_768(**kw):
    return _create("imagenet", kw, embed_dim=768, depth=10, num_heads=12)


@register_model
def qkformer_cifar_4_384(**kw):
    return _create("cifar", kw, embed_dim=384, depth=4, num_heads=8)


@register_model
def qkformer_dvs_2_256(**kw):
    return _create("dvs", kw, in_chans=2, embed_dim=256, depth=2, num_heads=16, mlp_ratio=1.0)


@register_model
def qkformer_dvs128_2_256(**kw):
    return _create("dvs", kw, in_chans=2, embed_dim=256, depth=2, num_heads=16)


@register_model
def qkformer_digits(**kw):
    return _create("cifar", kw, in_chans=1, embed_dim=64, depth=3, num_heads=4)
