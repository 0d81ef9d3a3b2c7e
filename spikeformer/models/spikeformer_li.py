"""Spikeformer: "Spikeformer: A Novel Architecture for Training High-Performance Low-Latency Spiking Neural
Network" (Yudong Li, Yunlin Lei, Xu Yang; arXiv 2211.10686).

Built as the official code (``Loydian/Spikeformer``, ``*/spikeformer.py``) builds it; the paper's two named parts are

* the **Convolutional Tokenizer**: SEW-ResNet blocks (conv-BN-neuron twice; shortcut identity, or AvgPool(stride)
  then 1x1 conv-BN-neuron when the stride or width changes; outputs ADDed, so tokens are small integers, not
  binary), widths and strides per variant; no class token;
* **spatio-temporal attention**, as TimeSformer's divided space-time attention: per block
  ``x += temporal_fc(TAttn(LN(x)))`` (softmax MHSA over the T tokens of each position; ``temporal_fc`` starts at
  zero so the branch is inert at init), ``x += SAttn(LN(x))`` (softmax MHSA over the N tokens of each time step),
  ``x += MLP(LN(x))`` with ``MLP = Linear -> neuron -> Linear`` whose neuron integrates over time.

Q/K/V are real-valued LayerNorm outputs: there is no neuron inside attention. Learned spatial ``pos_embed``
(nearest-resized when the token grid changes) and temporal ``time_embed`` (zero init; nearest-resized when T
changes) are added after the tokenizer. The head pools all T*N tokens with a learned softmax weighting
(CCT's sequence pooling) and classifies the pooled vector once. Neurons: PLIF (init_tau 2, detach_reset,
Sigmoid(4) surrogate) on DVS; the parametric LIAF (:class:`spikeformer.neurons.PLIAF`, analog ``ReLU(H)``
output) on ImageNet.

Stochastic depth keeps the official code's masks: the temporal branch drops per (sample, position), the spatial
branch per (sample, time step), the MLP branch per time step (shared by the batch), because the official
``DropPath`` sees the tensors in those layouts. :func:`checkpoint_filter_fn` maps official state dicts onto this
module.

Numerics (:mod:`spikeformer.layers.numerics`). ``exact``: the tokenizer runs NCHW convolutions and BatchNorm2d on the
merged T*B batch, and every block runs the official ``Block.forward`` on its ``b (h w t) m`` token layout with its
reshapes, ``nn.Linear`` layers and attention products, so that logits (and, in training mode from the same seed,
the stochastic-depth masks and BatchNorm statistics) equal the official code's bit for bit
(``tests/data/spikeformer_li_make_golden.py``). ``fast``: channels-last frames and convolutions over the nonzero
spike sums in the tokenizer (:func:`~spikeformer.layers.blocks.conv_bn_neuron`), tokens kept ``[T, B, N, D]``,
oneDNN Linears, the fused attention kernel for the spatial attention, ``fc2`` over the MLP neuron's nonzero outputs.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeformerError
from ..kernels.cpu import bf16
from ..layers import NumericsAware, expand_time, seq_apply, wants_fast
from ..layers.blocks import conv_bn_neuron, small_nchw_block
from ..layers.fused_bn import fusable
from ..layers.sparse import spike_linear
from ..layers.init import trunc_normal_
from ..neurons import neuron_factory
from ._base import SpikingClassifier
from .registry import IMAGENET_MEAN, IMAGENET_STD, cfg, register_model

PLIF_DEFAULTS = dict(tau=2.0, detach_reset=True)  # MultiStepParametricLIFNode(detach_reset=True); tau -> init_tau


def _make_neuron_factory(neuron: Any):
    """``neuron_factory`` with the family defaults (tau 2 -> init_tau for PLIF/PLIAF, detach_reset)."""
    return neuron_factory(neuron, **PLIF_DEFAULTS)


def tokenizer_widths(in_chans: int, embed_dim: int, n_blocks: int, paired: bool) -> list[int]:
    """The official Tokenizer's width rule.

    ``paired=False`` (an int stride in the official code): widths ``D/2^(n-1), ..., D/2, D``;
    ``paired=True`` (a stride list): two blocks per stage, ``D/2^(n/2-1)`` twice, ..., ``D`` twice.
    """
    if not paired:
        return [in_chans] + [embed_dim // 2 ** (n_blocks - i - 1) for i in range(n_blocks - 1)] + [embed_dim]
    widths = [in_chans]
    for i in range(n_blocks // 2 - 1):
        widths += [embed_dim // 2 ** (n_blocks // 2 - i - 1)] * 2
    return widths + [embed_dim, embed_dim]


def drop_path(x: torch.Tensor, p: float, training: bool, mask_shape: Sequence[int]) -> torch.Tensor:
    """Stochastic depth with an explicit mask shape (1 = shared along that dim); the official ``drop_path``'s
    arithmetic (``x / keep * floor(keep + U)``), so that the exact path draws and applies the same masks."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = (keep + torch.rand(tuple(mask_shape), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


# A tokenizer block whose BatchNorm + neuron the compiled kernel cannot fuse (PLIF, PLIAF: a learnable decay) gains
# only channels-last convolutions on the fast path; on NCHW frames with fewer output elements per call than this it
# runs the exact operations. At batch 4, T=2, 32x32 (131k-262k elements in the first blocks) the ImageNet
# configuration's training step was 0.977x of exact on the fast path and 1.008x with this and the block rule below (one
# process, the order alternating); the title model's blocks (batch 32, T=8: 2^19 elements and more) keep the fast path.
MIN_FAST_UNFUSED_ELEMENTS = 2 ** 19
# Space-time blocks over fewer tokens per frame than this take the official layout on the fast path too: one block
# (D=512, 4 tokens, batch 4, T=2) measured 0.97x fast against official, 1.01-1.05x at 16-64 tokens.
FAST_MIN_BLOCK_TOKENS = 16
# ... and so do blocks over fewer token rows (T x B x tokens) per call than this. Whole training steps, fast blocks
# against official ones on the fast path, one process alternating (AMD EPYC, AVX2, 2 threads): 128 rows
# (spikeformer_dvs_digits and _dvs_cifar10, batch 4, T=2, 16 tokens) 0.96-0.97x; 256 rows 0.99x; 512 rows 1.04x;
# 4096 rows (the title model's recipe, batch 32, T=8) 1.04x.
FAST_MIN_BLOCK_ROWS = 256
# The MLP's second Linear runs over the listed nonzero spikes from this many rows (tokens x frames) per call: at 128
# rows (batch 4, T=2, 16 tokens) listing them cost more than the small dense GEMM (0.98x against 1.00x per step)
FAST_MIN_FC2_ROWS = 512


class ConvBNNeuron(NumericsAware, nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> neuron on ``[T, B, C, H, W]`` (the official ``conv`` helper), run by the
    shared block :func:`~spikeformer.layers.blocks.conv_bn_neuron` (``spikes_in``: the input is spikes or spike
    sums, so the fast path may convolve over the nonzero inputs). Children are named ``conv``/``bn``/``neuron`` as
    in every released checkpoint of this family."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, neuron,
                 spikes_in: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.neuron = neuron()
        self.spikes_in = spikes_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        if fast and small_nchw_block(self.conv, x, MIN_FAST_UNFUSED_ELEMENTS) and (
                not fusable(self.bn, self.neuron) or small_nchw_block(self.conv, x)):
            # a PLIF/PLIAF block on small NCHW frames (MIN_FAST_UNFUSED_ELEMENTS), or any block on smaller ones
            # (conv_bn_neuron's own rule, decided here once)
            fast = False
        return conv_bn_neuron(self.conv, self.bn, self.neuron, x, self.spikes_in, fast)


class SEWBlock(nn.Module):
    """SEW-ResNet block with ADD connect: ``conv1 -> conv2`` plus identity or ``AvgPool -> 1x1 conv``. The
    average pool keeps the layout of its input (channels-last frames on the fast path)."""

    def __init__(self, cin: int, cout: int, stride: int, kernel_size: int, neuron, spikes_in: bool = True):
        super().__init__()
        pad = kernel_size // 2
        self.stride = stride
        self.conv1 = ConvBNNeuron(cin, cout, kernel_size, stride, pad, neuron, spikes_in)
        self.conv2 = ConvBNNeuron(cout, cout, kernel_size, 1, pad, neuron)
        self.shortcut = (ConvBNNeuron(cin, cout, 1, 1, 0, neuron, spikes_in) if (stride != 1 or cin != cout)
                         else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if self.shortcut is None:
            return out + x
        if self.stride != 1:
            x = seq_apply(lambda y: F.avg_pool2d(y, self.stride, self.stride), x)
        return out + self.shortcut(x)


class ConvTokenizer(nn.Module):
    """The Convolutional Tokenizer: SEW blocks with per-block strides; ``[T,B,C,H,W] -> [T,B,D,H',W']``."""

    def __init__(self, widths: Sequence[int], strides: Sequence[int], kernel_size: int, neuron):
        super().__init__()
        if len(widths) != len(strides) + 1:
            raise SpikeformerError(
                f"tokenizer needs one stride per block: got {len(widths) - 1} blocks and strides {list(strides)}"
            )
        self.strides, self.kernel_size = list(strides), kernel_size
        self.blocks = nn.Sequential(
            *[SEWBlock(widths[i], widths[i + 1], s, kernel_size, neuron, spikes_in=i > 0)  # block 0 sees the input
              for i, s in enumerate(strides)]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid for an input of ``height x width``."""
        pad = self.kernel_size // 2
        for s in self.strides:
            height = (height + 2 * pad - self.kernel_size) // s + 1
            width = (width + 2 * pad - self.kernel_size) // s + 1
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


FUSED_MIN_TOKENS = 32  # shortest sequence for which the fused CPU attention kernel beats two batched matmuls


class Attention(NumericsAware, nn.Module):
    """ViT multi-head softmax self-attention over ``[B, L, D]``: qkv without bias, proj with bias.

    Exact: the official products, ``softmax((q @ k^T) * scale) @ v``. Fast: PyTorch's fused attention kernel
    (``scaled_dot_product_attention``, the same function up to rounding, no ``[L, L]`` matrix kept for backward)
    from :data:`FUSED_MIN_TOKENS` tokens per sequence; shorter sequences (the temporal attention over T steps) are
    faster as the two batched matmuls, on CPU, than the fused kernel's tiling."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise SpikeformerError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if bf16.active(x):  # bf16 products emulated on this CPU: the fast path's operations in fp32 on bf16 values
            x = bf16.call(lambda *qkv_: self._attend(*qkv_, fast=True), q, k, v)
        else:
            x = self._attend(q, k, v, wants_fast(self, x))
        return self.proj(x.transpose(1, 2).reshape(B, L, C))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fast: bool) -> torch.Tensor:
        if fast and (q.shape[-2] >= FUSED_MIN_TOKENS or q.device.type != "cpu"):
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v


class Mlp(NumericsAware, nn.Module):
    """``Linear -> neuron -> Linear`` on ``[T, B, N, D]``; the neuron runs over T. The Linears see ``[T*B, N, D]``
    as under the official ``SeqToANNContainer``. On the fast path ``fc2`` multiplies only the nonzero outputs of
    the neuron (:func:`~spikeformer.layers.sparse.spike_linear`; the dense GEMM where too many are nonzero, e.g.
    the analog PLIAF)."""

    def __init__(self, dim: int, hidden: int, neuron):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.neuron = neuron()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        h = self.neuron(self.fc1(x.flatten(0, 1)).unflatten(0, (T, B))).flatten(0, 1)
        observed = self.fc2._forward_hooks or self.fc2._forward_pre_hooks  # hooks must see their call
        listed = wants_fast(self, h) and not observed and h.numel() // h.shape[-1] >= FAST_MIN_FC2_ROWS
        y = spike_linear(self.fc2, h) if listed else None
        return (self.fc2(h) if y is None else y).unflatten(0, (T, B))


class Block(NumericsAware, nn.Module):
    """Divided space-time attention block on tokens ``[T, B, N, D]``.

    Fast: every branch on the ``[T, B, N, D]`` tokens (the spatial attention and the MLP on free views, the temporal
    attention on one permuted copy). Exact: the official ``Block.forward`` on its ``b (h w t) m`` layout, with its
    reshapes (so every Linear, LayerNorm and matmul sees the official shapes) and its stochastic-depth masks.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, neuron, drop_path: float = 0.0):
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_attn = Attention(dim, num_heads)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), neuron)
        self.drop_path = drop_path

    def _drop(self, x: torch.Tensor, mask_shape: Sequence[int]) -> torch.Tensor:
        return drop_path(x, self.drop_path, self.training, mask_shape)

    def temporal(self, x: torch.Tensor) -> torch.Tensor:
        """The temporal branch before ``temporal_fc``: attention over T for every (sample, position)."""
        T, B, N, D = x.shape
        xt = x.permute(1, 2, 0, 3).reshape(B * N, T, D)
        y = self.temporal_attn(self.temporal_norm1(xt)).reshape(B, N, T, D).permute(2, 0, 1, 3)
        return self._drop(y, (1, B, N, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, D = x.shape
        if not wants_fast(self, x) or N < FAST_MIN_BLOCK_TOKENS or T * B * N < FAST_MIN_BLOCK_ROWS:
            return self.official(x)
        x = x + self.temporal_fc(self.temporal(x))
        xs = self.attn(self.norm1(x.reshape(T * B, N, D))).reshape(T, B, N, D)
        x = x + self._drop(xs, (T, B, 1, 1))
        return x + self._drop(self.mlp(self.norm2(x)), (T, 1, 1, 1))

    def official(self, x: torch.Tensor) -> torch.Tensor:
        """The official block on ``x [T, B, N, D]`` in its ``b (h w t) m`` layout; returns a ``[T, B, N, D]`` view of
        that layout (the next exact block reads it without a copy)."""
        T, B, N, D = x.shape
        x = x.permute(1, 2, 0, 3).reshape(B, N * T, D)  # b (h w t) m
        res = self._drop(self.temporal_attn(self.temporal_norm1(x.view(B * N, T, D))), (B * N, 1, 1))
        xt = x + self.temporal_fc(res.view(B, N * T, D))
        xs = xt.view(B, N, T, D).transpose(1, 2).reshape(B * T, N, D)  # (b t) (h w) m
        res = self._drop(self.attn(self.norm1(xs)), (B * T, 1, 1))
        x = xt + res.view(B, T, N, D).transpose(1, 2).reshape(B, N * T, D)
        res = self._drop(self.mlp(self.norm2(x.view(B, N, T, D).permute(2, 0, 1, 3))), (T, 1, 1, 1))  # t b (h w) m
        x = x + res.permute(1, 2, 0, 3).reshape(B, N * T, D)
        return x.view(B, N, T, D).permute(2, 0, 1, 3)


class Spikeformer(SpikingClassifier):
    """Spikeformer (Li et al.): convolutional tokenizer, space-time attention blocks, sequence-pooling head.

    Args:
        tokenizer_widths: channels ``[in_chans, w1, ..., D]`` of the SEW blocks (see :func:`tokenizer_widths`).
        tokenizer_strides: one stride per SEW block.
        kernel_size: tokenizer kernel (padding ``k // 2``).
        img_size: input resolution the ``pos_embed`` grid is built for (other sizes are resized, nearest).
        T: time steps; images are repeated T times, frames ``[T, B, C, H, W]`` are used as they are.
        neuron: 'plif' (DVS default), 'pliaf' (ImageNet), or any spec/factory accepted by ``neuron_factory``.
    """

    def __init__(
        self,
        tokenizer_widths: Sequence[int] = (2, 64, 64, 128, 128, 256, 256),
        tokenizer_strides: Sequence[int] = (2, 1, 2, 1, 2, 1),
        kernel_size: int = 3,
        in_chans: int | None = None,
        num_classes: int = 10,
        embed_dim: int | None = None,
        depth: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        T: int = 4,
        img_size: int | Sequence[int] = 128,
        drop_path_rate: float = 0.1,
        neuron: Any = "plif",
    ):
        super().__init__()
        widths = list(tokenizer_widths)
        if in_chans is not None:
            widths[0] = in_chans
        if embed_dim is not None and embed_dim != widths[-1]:
            raise SpikeformerError(
                f"embed_dim={embed_dim} must equal the last tokenizer width {widths[-1]}; pass tokenizer_widths"
            )
        embed_dim = widths[-1]
        make = _make_neuron_factory(neuron)
        self.T, self.in_chans, self.num_classes = T, widths[0], num_classes
        self.embed_dim = self.num_features = embed_dim
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        self.patch_embed = ConvTokenizer(widths, tokenizer_strides, kernel_size, make)
        self.grid = self.patch_embed.grid(*self.img_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, T, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, make, dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.attention_pool = nn.Linear(embed_dim, 1)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # features_only: the last tokenizer block at each resolution, then the last transformer block's tokens
        self.feature_info, r = [], 1
        for i, s in enumerate(tokenizer_strides):
            r *= s
            if i + 1 == len(tokenizer_strides) or tokenizer_strides[i + 1] > 1:
                self.feature_info.append(dict(num_chs=widths[i + 1], reduction=r, module=f"patch_embed.blocks.{i}"))
        self.feature_info.append(dict(num_chs=embed_dim, reduction=r, module=f"blocks.{depth - 1}" if depth else
                                      "patch_embed"))

        trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:  # TimeSformer's zero init: the temporal branch starts as the identity
            nn.init.zeros_(blk.temporal_fc.weight)
            nn.init.zeros_(blk.temporal_fc.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "time_embed"}

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == self.grid:
            return self.pos_embed
        D = self.embed_dim
        pe = self.pos_embed.transpose(1, 2).reshape(1, D, *self.grid)
        return F.interpolate(pe, size=(h, w), mode="nearest").flatten(2).transpose(1, 2)

    def _time_embed(self, T: int) -> torch.Tensor:
        if T == self.time_embed.shape[1]:
            return self.time_embed[0]
        return F.interpolate(self.time_embed.transpose(1, 2), size=T, mode="nearest").transpose(1, 2)[0]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> embedded tokens ``[T, B, N, D]`` (tokenizer + spatial and temporal embeddings, added in the
        official order)."""
        x = expand_time(x, self.T, self.in_chans)
        x = self.patch_embed(x)  # [T, B, D, H', W']
        T, B, D, h, w = x.shape
        x = x.flatten(3).transpose(-1, -2) + self._pos_embed(h, w)
        return x + self._time_embed(T)[:, None, None, :]

    def _pool_inputs(self, x: torch.Tensor):
        """Blocks' output ``[T, B, N, D]`` -> normalised tokens ``[B, N*T, D]`` (official order: token-major) and their
        sequence-pooling weights ``[B, N*T, 1]`` (softmax over space and time)."""
        for blk in self.blocks:
            x = blk(x)
        T, B, N, D = x.shape
        x = self.norm(x.permute(1, 2, 0, 3).reshape(B, N * T, D))
        return x, F.softmax(self.attention_pool(x), dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` -> sequence-pooled features ``[B, D]``."""
        x, w = self._pool_inputs(self.tokens(x))
        return bf16.matmul(w.transpose(-1, -2), x).squeeze(-2)

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features split by time step, ``[T, B, D]``: step t's share of the weighted sum, times T, so that
        their mean over T is :meth:`forward_features` (the pooling weights are shared over space and time)."""
        x = self.tokens(x)
        T = x.shape[0]
        x, w = self._pool_inputs(x)
        B, NT, D = x.shape
        return (w * x).reshape(B, NT // T, T, D).sum(1).transpose(0, 1) * T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


_MLP_NAMES = {"0": "fc1", "1": "neuron", "2": "fc2"}


def _map_official_key(k: str) -> str:
    m = re.match(r"^patch_embed\.conv_layers\.(\d+)\.(residual_function\.([01])|shortcut\.1)\.(0\.0|0\.1|1)\.(.+)$", k)
    if m:
        blk, branch, idx, part, rest = m.groups()
        name = "shortcut" if branch.startswith("shortcut") else f"conv{int(idx) + 1}"
        part = {"0.0": "conv", "0.1": "bn", "1": "neuron"}[part]
        return f"patch_embed.blocks.{blk}.{name}.{part}.{rest}"
    m = re.match(r"^(blocks\.\d+)\.mlp\.mlp\.(\d)\.(?:0\.)?(.+)$", k)
    if m:
        blk, idx, rest = m.groups()
        return f"{blk}.mlp.{_MLP_NAMES[idx]}.{rest}"
    return k


def checkpoint_filter_fn(state_dict: dict, model: Spikeformer) -> dict:
    """Map an official Spikeformer state_dict (``Loydian/Spikeformer``) onto :class:`Spikeformer`.

    Strips the wrapper's ``model.`` prefix (and the ``module`` level that SpikingJelly releases up to about
    0.0.0.0.4 put inside ``SeqToANNContainer``; 0.0.0.0.10/0.0.0.0.12 have none), then renames the tokenizer's
    nested ``Sequential`` indices to ``conv1``/``conv2``/``shortcut`` . ``conv``/``bn``/``neuron`` and the MLP's
    to ``fc1``/``neuron``/``fc2``; transformer and head names are unchanged. Our own state dicts pass through untouched.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("model."):
            k = k[len("model."):]
        k = k.replace(".module.", ".")
        out[_map_official_key(k)] = v
    return out


# --------------------------------------------------------------------------------------------- registry
_PAPER = ("Spikeformer: A Novel Architecture for Training High-Performance Low-Latency Spiking Neural Network "
          "(Li, Lei, Yang; arXiv 2211.10686)")
_DVS = dict(mean=(0.0, 0.0), std=(1.0, 1.0), family="spikeformer", paper=_PAPER,
            first_conv="patch_embed.blocks.0.conv1.conv")

default_cfgs = {
    "spikeformer_dvs_cifar10": cfg(
        input_size=(2, 128, 128), T=4, num_classes=10, dataset="cifar10-dvs", published={"cifar10-dvs": 81.4},
        notes="official PLIF_spikeformer_7_3x2x3; 8,792,993 params as built by the official code; "
        "trained with label smoothing 0.14 and the repo's DVS augmentation", **_DVS,
    ),
    "spikeformer_dvs_gesture": cfg(
        input_size=(2, 128, 128), T=16, num_classes=11, dataset="dvs128-gesture",
        published={"dvs128-gesture": 98.96},
        notes="official PLIF_spikeformer_7_5x3x1 (k=5 tokenizer); 9,279,900 params as built by the official code",
        **_DVS,
    ),
    "spikeformer_imagenet": cfg(
        input_size=(3, 224, 224), T=4, num_classes=1000, dataset="imagenet", published={"imagenet": 78.31},
        mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bilinear", family="spikeformer",
        paper=_PAPER, first_conv="patch_embed.blocks.0.conv1.conv",
        notes="official PLIAF_spikeformer_7_3x2x4: parametric LIAF neurons (analog ReLU output), so no layer "
        "is spike-driven; 39,320,836 params as built by the official code",
    ),
    "spikeformer_dvs_digits": cfg(
        input_size=(2, 32, 32), T=8, num_classes=10, dataset="events-digits",
        notes="small Spikeformer for the emulated-DVS digits (2x32x32 event frames, 4x4 tokens); not a paper config",
        # 25 epochs: with the default 15 its held-out top-1 ended at 94.4-96.1 % as float rounding changed (README)
        recipe={"epochs": 25},
        **_DVS,
    ),
}


def _create(**kwargs) -> Spikeformer:
    return Spikeformer(**kwargs)


@register_model
def spikeformer_dvs_cifar10(**kw):
    in_chans = kw.pop("in_chans", 2)
    kw.setdefault("img_size", 128)
    return _create(tokenizer_widths=tokenizer_widths(in_chans, 256, 6, paired=True),
                   tokenizer_strides=(2, 1, 2, 1, 2, 1), kernel_size=3, depth=7, num_heads=4, mlp_ratio=2, **kw)


@register_model
def spikeformer_dvs_gesture(**kw):
    in_chans = kw.pop("in_chans", 2)
    kw.setdefault("img_size", 128)
    return _create(tokenizer_widths=tokenizer_widths(in_chans, 256, 3, paired=False),
                   tokenizer_strides=(2, 2, 2), kernel_size=5, depth=7, num_heads=4, mlp_ratio=2, **kw)


@register_model
def spikeformer_imagenet(**kw):
    in_chans = kw.pop("in_chans", 3)
    kw.setdefault("img_size", 224)
    kw.setdefault("neuron", "pliaf")
    return _create(tokenizer_widths=tokenizer_widths(in_chans, 512, 8, paired=True),
                   tokenizer_strides=(2, 1, 2, 1, 2, 1, 2, 1), kernel_size=3, depth=7, num_heads=8, mlp_ratio=3,
                   **kw)


@register_model
def spikeformer_dvs_digits(**kw):
    kw.setdefault("in_chans", 2)
    kw.setdefault("img_size", 32)
    # three stride-2 SEW blocks: 4x4 tokens of the 32x32 sensor, as Spikformer's digits config has. With two blocks
    # (8x8 tokens) the same recipe reached 87.5 %: training accuracy 99 %, test accuracy swinging 50-88 % between
    # epochs; with 16 tokens and the default shifts of events-digits, 95.6-95.8 % in 2.1-2.5 min (README)
    kw.setdefault("tokenizer_widths", (2, 32, 64, 64))
    kw.setdefault("tokenizer_strides", (2, 2, 2))
    for k, v in dict(kernel_size=3, depth=2, num_heads=2, mlp_ratio=2).items():
        kw.setdefault(k, v)
    return _create(**kw)
