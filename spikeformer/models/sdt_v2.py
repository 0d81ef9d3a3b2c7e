"""Spike-driven Transformer V2 (Meta-SpikeFormer): "Spike-driven Transformer V2: Meta Spiking Neural Network
Architecture Inspiring the Design of Next-generation Neuromorphic Chips" (Yao et al., ICLR 2024).

Faithful to the official code (BICLab/Spike-Driven-Transformer-V2, ``classification/models.py``,
``Spiking_vit_MetaFormer``): every neuron is ``MultiStepLIFNode(tau=2.0, detach_reset=True)`` (Sigmoid(4)
surrogate), the attention neuron has threshold 0.5; another ``neuron`` (a name, dict or factory) replaces them all,
e.g. ``neuron="ilif"`` for the integer-valued I-LIF of SDT-V3 / SpikeYOLO (:mod:`spikeformer.neurons.integer`).

Layout (paper Fig. 2, C0..C3 = ``embed_dim``): four stages on frames ``[T, B, C, H, W]`` with a real-valued
residual stream (membrane shortcut: every branch starts with a neuron and ends with a BatchNorm).

* **Downsampling** (``MS_DownSampling``): ``[LIF ->] Conv(bias) -> BN``; the first (7x7/2, on the image) has no
  neuron, the others are 3x3/2 except the last (3x3/1 into stage 4).
* **Conv-based block** (``MS_ConvBlock``, stages 1-2): ``x = x + SepConv(x)`` with the inverted separable
  convolution ``LIF -> 1x1 -> BN -> LIF -> depthwise 7x7 -> 1x1 -> BN`` (no BN after the depthwise conv), then the
  channel convolution ``x = x + BN(Conv3x3(LIF(BN(Conv3x3(LIF(x))))))`` (dim -> 4 dim -> dim).
* **Transformer block** (``MS_Block``, stages 3-4, 6 + 2 blocks): ``x = x + SDSA(x)``, ``x = x + MLP(x)``.
  SDSA (the paper's SDSA-3, ``MS_Attention_RepConv_qkv_id``): ``S = LIF(x)``; Q, K, V = ``LIF(BN(RepConv(S)))``;
  ``SN_0.5(Q (K^T V) * 0.125)`` per head; ``BN(RepConv(.))`` out. With spikes Q, K, V every product is an integer,
  so the scale folds into the neuron's threshold. RepConv is ``1x1 -> BN (padded with the BN of zero) ->
  depthwise 3x3 (no padding) -> 1x1 -> BN`` (re-parameterisable into one 3x3 convolution), followed by a second BN.
  The MLP is ``LIF -> 1x1 Conv1d -> BN -> LIF -> 1x1 Conv1d -> BN`` (dim -> 4 dim -> dim).
* **Head**: mean over tokens -> LIF -> Linear, averaged over time; ``distill=True`` adds the DeiT-style
  ``head_kd`` of the T=4 fine-tuning (training returns both logits when ``distilled_training`` is set, otherwise the
  two heads' mean, as the official eval does).

The official ``drop_path``/LayerNorm arguments build nothing that runs and are not built here.

Numerics: ``"exact"`` runs the official operations (NCHW convolutions and BatchNorm2d on the merged ``[T*B, ...]``
batch, the MLP's ``Conv1d`` + BatchNorm1d on ``[T*B, C, N]``, the heads split as the official code splits them);
``"fast"`` keeps frames channels-last, runs convolutions that read spikes over the nonzero inputs (1x1 as token
GEMMs), fuses each BatchNorm that feeds a neuron with it, and computes the attention on tokens in one compiled
kernel. The MLP's projections are :class:`~spikeformer.layers.TokenLinear` (``weight [out, in]``), so official
``Conv1d`` kernels ``[out, in, 1]`` are squeezed by :func:`checkpoint_filter_fn`; every other key is the official
one.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeformerError
from ..kernels.cpu import bf16
from ..layers import NumericsAware, TokenBN, TokenLinear, expand_time, seq_apply, wants_fast
from ..layers.attention import token_spike_attention
from ..layers.blocks import bn_neuron, conv_bn, conv_bn_neuron, conv_frames, frames_bn, linear_bn, linear_bn_neuron
from ..layers.init import trunc_normal_
from ..neurons import neuron_factory
from ._base import SpikingClassifier
from .registry import cfg, register_model

LIF_DEFAULTS = dict(tau=2.0, detach_reset=True)  # MultiStepLIFNode(tau=2.0, detach_reset=True), Sigmoid(4)
ATTN_SCALE = 0.125  # the official constant scale, whatever the head dim


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """Frames ``[T, B, C, H, W]`` -> tokens ``[T, B, N, C]`` (a view; contiguous for channels-last frames)."""
    return x.flatten(3).transpose(-1, -2)


def _frames(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Tokens ``[T, B, N, C]`` -> frames ``[T, B, C, H, W]`` (a view; channels-last for contiguous tokens)."""
    return y.transpose(-1, -2).unflatten(-1, (H, W))


# ---------------------------------------------------------------------------------------------------------------
# conv-based stages
# ---------------------------------------------------------------------------------------------------------------
class DownSampling(NumericsAware, nn.Module):
    """``MS_DownSampling``: ``[neuron ->] Conv2d(bias=True) -> BN`` (no neuron on the image)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int, padding: int, neuron=None):
        super().__init__()
        self.encode_conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding)
        self.encode_bn = nn.BatchNorm2d(out_chans)
        self.encode_lif = neuron() if neuron is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        spikes = self.encode_lif is not None
        if spikes:
            x = self.encode_lif(x)
        return conv_bn(self.encode_conv, self.encode_bn, x, spikes_in=spikes, fast=fast)


class SepConv(NumericsAware, nn.Module):
    """Inverted separable convolution (MobileNetV2) with spiking inputs: ``LIF -> 1x1 -> BN -> LIF -> dw 7x7 -> 1x1
    -> BN``."""

    def __init__(self, dim: int, neuron, expansion_ratio: int = 2, kernel_size: int = 7):
        super().__init__()
        med = int(expansion_ratio * dim)
        self.lif1 = neuron()
        self.pwconv1 = nn.Conv2d(dim, med, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(med)
        self.lif2 = neuron()
        self.dwconv = nn.Conv2d(med, med, kernel_size, padding=kernel_size // 2, groups=med, bias=False)
        self.pwconv2 = nn.Conv2d(med, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        s = conv_bn_neuron(self.pwconv1, self.bn1, self.lif2, self.lif1(x), spikes_in=True, fast=fast)
        y = conv_frames(self.dwconv, s, fast, spikes_in=True)
        return conv_bn(self.pwconv2, self.bn2, y, fast=fast)


class ConvBlock(NumericsAware, nn.Module):
    """``MS_ConvBlock``: ``x + SepConv(x)``, then ``x + BN(Conv3x3(LIF(BN(Conv3x3(LIF(x))))))``."""

    def __init__(self, dim: int, neuron, mlp_ratio: int = 4):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.Conv = SepConv(dim, neuron)
        self.lif1 = neuron()
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.lif2 = neuron()
        self.conv2 = nn.Conv2d(hidden, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        x = self.Conv(x) + x
        s = conv_bn_neuron(self.conv1, self.bn1, self.lif2, self.lif1(x), spikes_in=True, fast=fast)
        return x + conv_bn(self.conv2, self.bn2, s, spikes_in=True, fast=fast)


# ---------------------------------------------------------------------------------------------------------------
# transformer stages
# ---------------------------------------------------------------------------------------------------------------
class BNAndPad(nn.Module):
    """BatchNorm2d whose output is padded with the BatchNorm of a zero input (``bias - mean * weight / std``, from
    the running statistics also in training), so that the RepConv chain equals one zero-padded 3x3 convolution."""

    def __init__(self, pad_pixels: int, num_features: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad_pixels = pad_pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, C, H, W]
        y = self.bn(x)
        p = self.pad_pixels
        if p <= 0:
            return y
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        if bn.affine:
            border = bn.bias.detach() - bn.running_mean * bn.weight.detach() / std
        else:
            border = -bn.running_mean / std
        y = F.pad(y, [p, p, p, p])
        border = border.view(1, -1, 1, 1)
        y[:, :, :p, :] = border
        y[:, :, -p:, :] = border
        y[:, :, :, :p] = border
        y[:, :, :, -p:] = border
        return y


class RepConv(nn.Module):
    """``1x1 -> BNAndPad -> [depthwise 3x3 (no padding) -> 1x1 -> BN]`` as ``body`` (the official layout)."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, in_chans, 1, bias=False),
            BNAndPad(1, in_chans),
            nn.Sequential(nn.Conv2d(in_chans, in_chans, 3, groups=in_chans, bias=False),
                          nn.Conv2d(in_chans, out_chans, 1, bias=False),
                          nn.BatchNorm2d(out_chans)),
        )

    def run(self, x: torch.Tensor, fast: bool) -> torch.Tensor:
        """Frames ``[T, B, C, H, W]`` of spikes -> ``[T, B, C', H, W]``."""
        pw1, pad_bn, (dw, pw2, bn) = self.body[0], self.body[1], self.body[2]
        y = frames_bn(pad_bn, conv_frames(pw1, x, fast, spikes_in=True), fast)
        y = conv_frames(dw, y, fast)
        return frames_bn(bn, conv_frames(pw2, y, fast), fast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, C, H, W], as the official module
        return self.body(x)


class SDSA(NumericsAware, nn.Module):
    """Spike-driven self-attention with RepConv projections (``MS_Attention_RepConv_qkv_id``) on frames."""

    def __init__(self, dim: int, num_heads: int, neuron, scale: float = ATTN_SCALE):
        super().__init__()
        if dim % num_heads:
            raise SpikeformerError(f"dim {dim} is not divisible by num_heads {num_heads}; choose num_heads dividing "
                                   "every transformer stage's width")
        self.dim, self.num_heads, self.scale = dim, num_heads, scale
        self.head_lif = neuron()
        for n in ("q", "k", "v"):
            setattr(self, f"{n}_conv", nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim)))
            setattr(self, f"{n}_lif", neuron())
        self.attn_lif = neuron(v_threshold=0.5)
        self.proj_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))

    def _spikes(self, name: str, s: torch.Tensor, fast: bool) -> torch.Tensor:
        conv = getattr(self, f"{name}_conv")
        return bn_neuron(conv[1], getattr(self, f"{name}_lif"), conv[0].run(s, fast), fuse=fast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        fast = wants_fast(self, x)
        s = self.head_lif(x)
        q, k, v = (self._spikes(n, s, fast) for n in ("q", "k", "v"))
        if fast:  # tokens [T, B, N, C] are free views of channels-last frames
            y = token_spike_attention(_tokens(q).contiguous(), _tokens(k).contiguous(), _tokens(v).contiguous(),
                                      self.num_heads, self.scale, fast=True)
            a = _frames(self.attn_lif(y), H, W)
        else:  # the official head split [T, B, h, N, d] and merge
            h, N = self.num_heads, H * W

            def heads(t):
                return t.flatten(3).transpose(-1, -2).reshape(T, B, N, h, C // h).permute(0, 1, 3, 2, 4).contiguous()

            q, k, v = heads(q), heads(k), heads(v)
            y = bf16.matmul(q, bf16.matmul(k.transpose(-2, -1), v)) * self.scale
            y = y.transpose(3, 4).reshape(T, B, C, N).contiguous()
            a = self.attn_lif(y).reshape(T, B, C, H, W)
        return seq_apply(self.proj_conv[1], self.proj_conv[0].run(a, fast))


class MLP(NumericsAware, nn.Module):
    """``MS_MLP``: ``BN(W2 LIF(BN(W1 LIF(x))))`` with 1x1 ``Conv1d`` projections over the tokens."""

    def __init__(self, dim: int, hidden: int, neuron):
        super().__init__()
        self.fc1_conv = TokenLinear(dim, hidden, official_op="conv1d")
        self.fc1_bn = TokenBN(hidden)
        self.fc1_lif = neuron()
        self.fc2_conv = TokenLinear(hidden, dim, official_op="conv1d")
        self.fc2_bn = TokenBN(dim)
        self.fc2_lif = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        s = _tokens(self.fc1_lif(x))
        s = linear_bn_neuron(self.fc1_conv, self.fc1_bn, self.fc2_lif, s, sparse=True)
        return _frames(linear_bn(self.fc2_conv, self.fc2_bn, s, sparse=True), H, W)


class Block(nn.Module):
    """``MS_Block``: ``x + SDSA(x)``, then ``x + MLP(x)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, neuron):
        super().__init__()
        self.attn = SDSA(dim, num_heads, neuron)
        self.mlp = MLP(dim, int(dim * mlp_ratio), neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------
class MetaSpikeFormer(SpikingClassifier):
    """Spike-driven Transformer V2 (Meta-SpikeFormer).

    ``embed_dim``: the four stage widths ``[C0, C1, C2, C3]`` (stage 1 starts at ``C0 / 2``); ``depths``: transformer
    blocks in stages 3 and 4 (official: 6 and 2); ``stem_stride``: stride of the first 7x7 convolution (2 as
    published; 1 for small images); ``distill`` (alias ``kd``): add the distillation head ``head_kd``.
    ``feature_info`` lists the four stage outputs as timm does; :meth:`forward_stages` returns them.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (128, 256, 512, 640),
        num_heads: int = 8,
        mlp_ratio: int = 4,
        depths: Sequence[int] = (6, 2),
        T: int = 4,
        neuron: Any = "lif",
        distill: bool = False,
        kd: bool | None = None,
        stem_stride: int = 2,
        img_size: int | None = None,  # accepted for timm compatibility; the network is size-agnostic
    ):
        super().__init__()
        embed_dim = tuple(int(c) for c in embed_dim)
        if len(embed_dim) != 4 or embed_dim[0] % 2:
            raise SpikeformerError(f"embed_dim must be four stage widths [C0, C1, C2, C3] with C0 even; got "
                                   f"{list(embed_dim)}")
        if len(tuple(depths)) != 2:
            raise SpikeformerError(f"depths must give the transformer blocks of stages 3 and 4, e.g. (6, 2); got "
                                   f"{depths}")
        if stem_stride not in (1, 2):
            raise SpikeformerError(f"stem_stride must be 1 or 2; got {stem_stride}")
        make = neuron_factory(neuron, **LIF_DEFAULTS)
        c0, c1, c2, c3 = embed_dim
        self.T, self.in_chans, self.num_classes = T, in_chans, num_classes
        self.embed_dim, self.num_features = embed_dim, c3
        self.downsample1_1 = DownSampling(in_chans, c0 // 2, 7, stem_stride, 3)
        self.ConvBlock1_1 = nn.ModuleList([ConvBlock(c0 // 2, make, mlp_ratio)])
        self.downsample1_2 = DownSampling(c0 // 2, c0, 3, 2, 1, make)
        self.ConvBlock1_2 = nn.ModuleList([ConvBlock(c0, make, mlp_ratio)])
        self.downsample2 = DownSampling(c0, c1, 3, 2, 1, make)
        self.ConvBlock2_1 = nn.ModuleList([ConvBlock(c1, make, mlp_ratio)])
        self.ConvBlock2_2 = nn.ModuleList([ConvBlock(c1, make, mlp_ratio)])
        self.downsample3 = DownSampling(c1, c2, 3, 2, 1, make)
        self.block3 = nn.ModuleList(Block(c2, num_heads, mlp_ratio, make) for _ in range(depths[0]))
        self.downsample4 = DownSampling(c2, c3, 3, 1, 1, make)
        self.block4 = nn.ModuleList(Block(c3, num_heads, mlp_ratio, make) for _ in range(depths[1]))
        self.lif = make()
        self.distilled = bool(distill if kd is None else kd)
        self.distilled_training = False  # training returns (logits, logits_kd) only when set (DeiT/timm)
        self.head = nn.Linear(c3, num_classes) if num_classes > 0 else nn.Identity()
        self.head_kd = (nn.Linear(c3, num_classes) if num_classes > 0 else nn.Identity()) if self.distilled else None
        for m in (self.head, self.head_kd):  # official _init_weights touches the nn.Linear heads only
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        r = stem_stride
        self.feature_info = [
            dict(num_chs=c0, reduction=2 * r, module="ConvBlock1_2.0"),
            dict(num_chs=c1, reduction=4 * r, module="ConvBlock2_2.0"),
            dict(num_chs=c2, reduction=8 * r, module=f"block3.{depths[0] - 1}" if depths[0] else "downsample3"),
            dict(num_chs=c3, reduction=8 * r, module=f"block4.{depths[1] - 1}" if depths[1] else "downsample4"),
        ]

    # -- features ------------------------------------------------------------------------------------------------
    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs ``[T, B, C_i, H_i, W_i]`` (real-valued residual stream; see ``feature_info``)."""
        x = expand_time(x, self.T, self.in_chans)
        out = []
        x = self.downsample1_1(x)
        for blk in self.ConvBlock1_1:
            x = blk(x)
        x = self.downsample1_2(x)
        for blk in self.ConvBlock1_2:
            x = blk(x)
        out.append(x)
        x = self.downsample2(x)
        for blk in (*self.ConvBlock2_1, *self.ConvBlock2_2):
            x = blk(x)
        out.append(x)
        x = self.downsample3(x)
        for blk in self.block3:
            x = blk(x)
        out.append(x)
        x = self.downsample4(x)
        for blk in self.block4:
            x = blk(x)
        out.append(x)
        return out

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` -> token-mean features ``[T, B, C3]``."""
        x = self.forward_stages(x)[-1]
        if x.is_contiguous():
            return x.flatten(3).mean(3)
        return x.mean((3, 4))  # channels-last frames (fast path): the same mean without a copy

    # -- heads -----------------------------------------------------------------------------------------------------
    def head_per_step(self, feats: torch.Tensor) -> torch.Tensor:
        s = self.lif(feats)
        y = self.head(s)
        return y if self.head_kd is None else (y + self.head_kd(s)) / 2

    def forward(self, x: torch.Tensor):
        s = self.lif(self.forward_features_per_step(x))
        y = self.head(s).mean(0)
        if self.head_kd is None:
            return y
        y_kd = self.head_kd(s).mean(0)
        if self.training and self.distilled_training:
            return y, y_kd
        return (y + y_kd) / 2

    def set_distilled_training(self, enable: bool = True) -> None:
        """Make training-mode :meth:`forward` return ``(logits, logits_kd)`` for a distillation loss (timm API)."""
        if enable and self.head_kd is None:
            raise SpikeformerError("this model has no distillation head; build it with distill=True")
        self.distilled_training = bool(enable)

    def reset_classifier(self, num_classes: int, global_pool=None, **_) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.head_kd is not None:
            dev = self.head.weight.device if isinstance(self.head, nn.Linear) else None
            self.head_kd = nn.Linear(self.num_features, num_classes).to(dev) if num_classes > 0 else nn.Identity()


_MLP_CONV = (".mlp.fc1_conv.weight", ".mlp.fc2_conv.weight")


def checkpoint_filter_fn(state_dict: dict, model: MetaSpikeFormer) -> dict:
    """Map an official Meta-SpikeFormer state_dict onto ours: the MLP's ``Conv1d`` kernels ``[out, in, 1]`` become
    ``[out, in]`` (TokenLinear); every other key and shape is the official one. A checkpoint with a distillation
    head (the T=4 fine-tuning) needs a model built with ``distill=True``: its eval logits average both heads."""
    if any(k.startswith("head_kd.") for k in state_dict) and getattr(model, "head_kd", None) is None:
        raise SpikeformerError("the checkpoint has a distillation head (head_kd.*), whose logits the official eval "
                               "averages with head's; build the model with distill=True")
    out = {}
    for k, v in state_dict.items():
        if k.endswith(_MLP_CONV) and v.dim() == 3 and v.shape[-1] == 1:
            v = v[..., 0]
        out[k] = v
    return out


def _create(**kwargs) -> MetaSpikeFormer:
    return MetaSpikeFormer(**kwargs)


_PAPER = "Spike-driven Transformer V2 / Meta-SpikeFormer (ICLR 2024)"
_RECIPE = ("published T=4 rows: 200 epochs at T=1 from scratch, then 50 epochs at T=4 with hard distillation from "
           "CAFormer-B36 (distill=True); parameter counts without head_kd")


def _imnet(top1=None, params=None, notes=_RECIPE):
    return cfg(input_size=(3, 224, 224), T=4, num_classes=1000, dataset="imagenet",
               published={"imagenet": top1} if top1 is not None else {}, paper_params_m=params, paper=_PAPER,
               crop_pct=0.875, interpolation="bicubic", first_conv="downsample1_1.encode_conv", notes=notes)


default_cfgs = {
    "sdt_v2_15m": _imnet(None, 15.1, notes="the 15.1M configuration (embed_dim [64, 128, 256, 360], as in SDT-V3's "
                         "segmentation configs); its ImageNet top-1 is not in the official repository. " + _RECIPE),
    "sdt_v2_8_384": _imnet(77.2, 31.3, notes="77.2% at T=4 (75.4% at T=1). " + _RECIPE),
    "sdt_v2_8_512": _imnet(80.0, 55.4, notes="80.0% at T=4 (the paper's headline '55M'). " + _RECIPE),
    "sdt_v2_8_768": _imnet(None, None, notes="official factory metaspikformer_8_768; no published accuracy"),
    "sdt_v2_digits": cfg(
        input_size=(1, 16, 16), T=1, num_classes=10, dataset="digits", paper=_PAPER, mean=(0.0,), std=(1.0,),
        first_conv="downsample1_1.encode_conv",
        notes="small Meta-SpikeFormer for the embedded 1x16x16 digits: widths [16, 32, 64, 64], one transformer "
        "block per stage, stride-1 stem (2x2 tokens for attention); neuron='ilif' trains it with integer spikes",
    ),
}


@register_model
def sdt_v2_15m(**kw):
    kw.setdefault("embed_dim", (64, 128, 256, 360))
    return _create(**kw)


@register_model
def sdt_v2_8_384(**kw):
    kw.setdefault("embed_dim", (96, 192, 384, 480))
    return _create(**kw)


@register_model
def sdt_v2_8_512(**kw):
    kw.setdefault("embed_dim", (128, 256, 512, 640))
    return _create(**kw)


@register_model
def sdt_v2_8_768(**kw):
    kw.setdefault("embed_dim", (192, 384, 768, 960))
    return _create(**kw)


@register_model
def sdt_v2_digits(**kw):
    kw.setdefault("in_chans", 1)
    kw.setdefault("depths", (1, 1))
    kw.setdefault("stem_stride", 1)
    kw.setdefault("num_heads", 4)
    kw.setdefault("embed_dim", (16, 32, 64, 64))
    return _create(**kw)
