"""Masked Spiking Transformer: "Masked Spiking Transformer" (Wang, Fang, Chen, Zhang, Ma; ICCV 2023).

The one family here that is trained as an ANN and run as an SNN. It is built as the official code
(bic-L/Masked-Spiking-Transformer, ``models/mst.py``) computes it after ``replace_activation_by_floor``:

* a Swin-T layout (patch 4, window 7, depths 2-2-6-2, heads 3-6-12-24, embed 96) with ``BatchNorm1d`` over the
  token channels wherever Swin has a LayerNorm (patch embedding, ``norm1``/``norm2`` of every block, patch
  merging), and a QCFS activation (:class:`~spikeformer.layers.qcfs.QCFS`, ``L = 16`` levels, ``up`` initialised
  to 2.0) in place of every official ``nn.ReLU`` placeholder, under the official names (``proj_if``,
  ``shortcut1_if``, ``q_if``, ``k_if``, ``v_if``, ``attn_if``, ``attn_v_if``, ``shortcut2_if``, ``fc1_if``,
  ``fc2_if``, ``reduction_if``): 124 thresholds in Swin-T;
* the official block order: ``x = shortcut + attn(act(norm1(x)))``, then ``x = norm2(x)`` *overwrites* x, and
  ``x = x + mlp(act(x))`` adds the normalised x (unlike Swin, whose second residual adds the un-normalised one);
* window attention with relative position bias and the cyclic-shift masks (-100) of Swin:
  ``a = act(act(q) @ act(k)^T * d^-0.5)``, then ``softmax(a + bias (+ mask)) @ act(v)``, ``act``, proj, ``act``;
  the softmax and the final ``LayerNorm`` stay real-valued, as in the official hybrid SNN;
* Random Spike Masking (:func:`~spikeformer.layers.qcfs.mask_spikes`) on q, k and the attention activation with
  the ratio ``masking_ratio`` (training and inference alike), exactly where the official code applies it. The
  paper's figure also draws masks in the MLP, which the official code never applies: ``mask_mlp=True`` masks the
  spikes entering ``fc1`` and ``fc2`` as well; it is off by default. At ratio 0 nothing is masked (the official
  mask still drops an element whenever ``rand`` returns exactly 0).

Geometry follows the official rule (a stage whose grid side is at most the window uses one window of that side and
no shift) and is computed at run time, so the model also runs on other resolutions: where a grid does not divide
into windows it is padded, as Swin's detection backbone does, and a smaller window reads the centre of the
relative-position table. At the configured ``img_size`` nothing is padded and the computation is the official one.

A converted SNN (:func:`spikeformer.convert.ann_to_snn`) replaces every QCFS by an IF neuron; the network itself is
unchanged. Numerics (:mod:`spikeformer.layers.numerics`): ``exact`` applies the BatchNorms to the official
``[B, C, L]`` contiguous transposes and uses ``nn.Linear``; ``fast`` normalises the flat ``[B*L, C]`` tokens and
runs the Linear layers on oneDNN. Official checkpoints (``{'model': ...}`` of ``main.py``) load strictly through
:func:`checkpoint_filter_fn`, which drops the derived buffers ``relative_position_index`` and ``attn_mask``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeformerError
from ..kernels.cpu import bf16
from ..layers import NumericsAware, expand_time
from ..layers.blocks import module_forward
from ..layers.init import trunc_normal_
from ..layers.qcfs import QCFS, check_ratio, mask_spikes
from ._base import SpikingClassifier
from .registry import cfg, register_model

MST_CIFAR_MEAN, MST_CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # data/build.py hard-codes these


class TokenBatchNorm(NumericsAware, nn.BatchNorm1d):
    """``BatchNorm1d`` over the channels of tokens ``[B, L, C]`` (statistics over B and L).

    Exact: ``bn(x.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()``, the official call; fast: the flat
    ``[B*L, C]`` view (the same statistics; PyTorch's vectorised channel-last kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return super().forward(x.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's ``drop_path``, scaled by the keep probability)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """``[B, H, W, C]`` -> windows ``[B * H/w * W/w, w, w, C]``."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """Windows ``[B * H/w * W/w, w, w, C]`` -> ``[B, H, W, C]``."""
    B = int(windows.shape[0] / (H * W / w / w))
    x = windows.view(B, H // w, W // w, w, w, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def relative_position_index(w: int, table_w: Optional[int] = None) -> torch.Tensor:
    """Index ``[w*w, w*w]`` into a relative-position table built for windows of side ``table_w`` (default ``w``):
    Swin's index for ``table_w == w``, the table's centre for a smaller window."""
    t = w if table_w is None else table_w
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # 2, w*w
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += t - 1
    rel[:, :, 1] += t - 1
    rel[:, :, 0] *= 2 * t - 1
    return rel.sum(-1)


def shift_attention_mask(H: int, W: int, w: int, shift: int) -> torch.Tensor:
    """Swin's mask ``[nW, w*w, w*w]`` (0 within a region of the cyclically shifted grid, -100 across regions)."""
    img_mask = torch.zeros((1, H, W, 1))
    cnt = 0
    for h in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for v in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            img_mask[:, h, v, :] = cnt
            cnt += 1
    mw = window_partition(img_mask, w).view(-1, w * w)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, float(-100.0)).masked_fill(mask == 0, float(0.0))


class WindowAttention(nn.Module):
    """Spiking window attention (W-MSA / SW-MSA) with relative position bias and Random Spike Masking."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 masking_ratio: float = 0.0, levels: int = 16, threshold: float = 2.0):
        super().__init__()
        if dim % num_heads:
            raise SpikeformerError(f"MST: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.masking_ratio = check_ratio(masking_ratio)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # derived from window_size alone: not saved (official checkpoints carry it; checkpoint_filter_fn drops it)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        act = lambda: QCFS(levels, threshold)  # noqa: E731
        self.q_if, self.k_if, self.v_if = act(), act(), act()
        self.attn_drop = nn.Dropout(attn_drop)
        self.attn_if, self.attn_v_if = act(), act()
        self.proj = nn.Linear(dim, dim)
        self.proj_if = act()
        self.proj_drop = nn.Dropout(proj_drop)
        self.softmax = nn.Softmax(dim=-1)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._index_cache: dict = {}

    def _index(self, w: int) -> torch.Tensor:
        if w == self.window_size:
            return self.relative_position_index
        dev = self.relative_position_index.device
        key = (w, dev)
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(w, self.window_size).to(dev)
        return self._index_cache[key]

    def forward(self, x: torch.Tensor, w: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Windows ``[B_, w*w, C]`` (``mask``: ``[nW, w*w, w*w]`` for shifted windows) -> ``[B_, w*w, C]``."""
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = mask_spikes(self.q_if(q), self.masking_ratio)
        k = mask_spikes(self.k_if(k), self.masking_ratio)
        attn = bf16.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = mask_spikes(self.attn_if(attn), self.masking_ratio)
        v = self.v_if(v)
        bias = self.relative_position_bias_table[self._index(w).view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = bf16.matmul(attn, v).transpose(1, 2).reshape(B_, N, C)
        x = self.proj_if(self.proj(self.attn_v_if(x)))
        return self.proj_drop(x)


class MLP(nn.Module):
    """fc1 (-> BN) -> act -> fc2 (-> BN) -> act; the BatchNorms exist in the ImageNet build only."""

    def __init__(self, dim: int, hidden: int, norm: bool = True, drop: float = 0.0, masking_ratio: float = 0.0,
                 mask_mlp: bool = False, levels: int = 16, threshold: float = 2.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm1 = TokenBatchNorm(hidden) if norm else None
        self.fc1_if = QCFS(levels, threshold)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm2 = TokenBatchNorm(dim) if norm else None
        self.fc2_if = QCFS(levels, threshold)
        self.drop = nn.Dropout(drop)
        self.masking_ratio = check_ratio(masking_ratio)
        self.mask_mlp = bool(mask_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.masking_ratio if self.mask_mlp else 0.0
        x = self.fc1(mask_spikes(x, r))
        if self.norm1 is not None:
            x = self.norm1(x)
        x = self.drop(mask_spikes(self.fc1_if(x), r))
        x = self.fc2(x)
        if self.norm2 is not None:
            x = self.norm2(x)
        return self.drop(self.fc2_if(x))


class Block(nn.Module):
    """One MST block: official order, with norm2 overwriting x before the MLP residual."""

    def __init__(self, dim: int, resolution: Sequence[int], num_heads: int, window_size: int = 7, shifted: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale=None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, mlp_norm: bool = True, masking_ratio: float = 0.0,
                 mask_mlp: bool = False, levels: int = 16, threshold: float = 2.0):
        super().__init__()
        # the official rule: a grid no larger than the window is one window, without shift
        self.window_size = min(resolution) if min(resolution) <= window_size else window_size
        self.shifted = bool(shifted)
        self.drop_path = float(drop_path)
        self.norm1 = TokenBatchNorm(dim)
        self.shortcut1_if = QCFS(levels, threshold)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                                    masking_ratio, levels, threshold)
        self.norm2 = TokenBatchNorm(dim)
        self.shortcut2_if = QCFS(levels, threshold)
        self.mlp = MLP(dim, int(dim * mlp_ratio), mlp_norm, drop, masking_ratio, mask_mlp, levels, threshold)
        self._mask_cache: dict = {}

    def geometry(self, H: int, W: int) -> tuple[int, int]:
        """``(window, shift)`` on an ``H x W`` grid."""
        w = self.window_size
        if min(H, W) <= w:
            return min(H, W), 0
        return w, (w // 2 if self.shifted else 0)

    def _attn_mask(self, Hp: int, Wp: int, w: int, s: int, device) -> torch.Tensor:
        key = (Hp, Wp, w, s, device)
        if key not in self._mask_cache:
            self._mask_cache[key] = shift_attention_mask(Hp, Wp, w, s).to(device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        shortcut = x
        x = self.shortcut1_if(self.norm1(x)).view(B, H, W, C)
        w, s = self.geometry(H, W)
        pad_b, pad_r = (-H) % w, (-W) % w
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, w).view(-1, w * w, C)
        mask = self._attn_mask(Hp, Wp, w, s, x.device) if s else None
        x = window_reverse(self.attn(windows, w, mask).view(-1, w, w, C), w, Hp, Wp)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :H, :W, :].contiguous()
        x = shortcut + drop_path(x.view(B, H * W, C), self.drop_path, self.training)
        x = self.norm2(x)
        return x + drop_path(self.mlp(self.shortcut2_if(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated -> BN(4C) -> Linear(4C, 2C, no bias) -> act."""

    def __init__(self, dim: int, levels: int = 16, threshold: float = 2.0):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = TokenBatchNorm(4 * dim)
        self.reduction_if = QCFS(levels, threshold)

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x0, x1 = x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :]
        x2, x3 = x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)
        H2, W2 = x.shape[1], x.shape[2]
        x = self.norm(x.view(B, -1, 4 * C))
        return self.reduction_if(self.reduction(x)), H2, W2


class BasicLayer(nn.Module):
    """The blocks of one stage (shifted windows on every odd block) and the patch merging after it."""

    def __init__(self, dim: int, resolution: Sequence[int], depth: int, num_heads: int, window_size: int,
                 drop_path: Sequence[float], downsample: bool, **block_kw):
        super().__init__()
        lv = dict(levels=block_kw["levels"], threshold=block_kw["threshold"])
        self.blocks = nn.ModuleList(
            Block(dim, resolution, num_heads, window_size, shifted=i % 2 == 1, drop_path=drop_path[i], **block_kw)
            for i in range(depth))
        self.downsample = PatchMerging(dim, **lv) if downsample else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        for blk in self.blocks:
            x = blk(x, H, W)
        if self.downsample is not None:
            x, H, W = self.downsample(x, H, W)
        return x, H, W


class PatchEmbed(nn.Module):
    """Conv (patch x patch, stride patch) -> tokens -> BN -> act."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, levels: int = 16, threshold: float = 2.0):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.proj_if = QCFS(levels, threshold)
        self.norm = TokenBatchNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        p = self.patch_size
        pad_b, pad_r = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = module_forward(self.proj, x)
        H, W = x.shape[-2:]
        return self.proj_if(self.norm(x.flatten(2).transpose(1, 2))), H, W


class MaskedSpikingTransformer(SpikingClassifier):
    """The MST ANN (QCFS activations): ``forward`` gives the official logits; ``T`` repeats a static input over T
    forward passes (``T = 1``, the default, is the ANN; the converted SNN runs one step per call)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        mlp_norm: bool = True,
        masking_ratio: float = 0.0,
        mask_mlp: bool = False,
        levels: int = 16,
        threshold: float = 2.0,
        T: int = 1,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise SpikeformerError(f"MST: depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        self.T, self.in_chans, self.num_classes = int(T), in_chans, num_classes
        self.img_size, self.embed_dim = img_size, embed_dim
        self.num_features = int(embed_dim * 2 ** (len(depths) - 1))
        self.masking_ratio = check_ratio(masking_ratio)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, levels, threshold)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]  # also under meta
        res = img_size // patch_size
        block_kw = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                        attn_drop=attn_drop_rate, mlp_norm=mlp_norm, masking_ratio=masking_ratio, mask_mlp=mask_mlp,
                        levels=levels, threshold=threshold)
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            r = res // 2 ** i
            self.layers.append(BasicLayer(int(embed_dim * 2 ** i), (r, r), depth, heads, window_size,
                                          dpr[sum(depths[:i]):sum(depths[:i + 1])], i < len(depths) - 1, **block_kw))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        # per-stage token maps (timm's feature_info): the patch embedding, then each stage's last block (before
        # its patch merging)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module="patch_embed")] + [
            dict(num_chs=int(embed_dim * 2 ** i), reduction=patch_size * 2 ** i, module=f"layers.{i}.blocks.{d - 1}")
            for i, d in enumerate(depths)]

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def set_masking_ratio(self, ratio: float) -> None:
        """Random Spike Masking ratio of every masked layer (also of a converted SNN)."""
        r = check_ratio(ratio)
        self.masking_ratio = r
        for m in self.modules():
            if isinstance(m, (WindowAttention, MLP)):
                m.masking_ratio = r

    def forward_ann(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, D]`` of images ``[N, C, H, W]``: the official ``forward_features``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise SpikeformerError(f"MST expects images [B, {self.in_chans}, H, W]; got shape {tuple(x.shape)}")
        x, H, W = self.patch_embed(x)
        x = self.pos_drop(x)
        for layer in self.layers:
            x, H, W = layer(x, H, W)
        x = self.norm(x)
        return torch.flatten(F.adaptive_avg_pool1d(x.transpose(1, 2), 1), 1)

    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated over T) or ``[T, B, C, H, W]`` -> features ``[T, B, D]``."""
        x = expand_time(x, self.T, self.in_chans)
        return self.forward_ann(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features_per_step(x).mean(0))

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}


def checkpoint_filter_fn(state_dict: dict, model: MaskedSpikingTransformer) -> dict:
    """An official MST state_dict (after QCFS replacement, as ``main.py`` saves it) onto ours: the same keys but the
    derived buffers ``relative_position_index`` and ``attn_mask``, which are rebuilt from the geometry."""
    if not any(k.endswith(".up") for k in state_dict):
        raise SpikeformerError(
            "the checkpoint holds no QCFS thresholds (no '*.up' keys): it is not an MST trained with QCFS "
            "activations (main.py replaces every activation before training); pass an MST checkpoint")
    return {k: v for k, v in state_dict.items()
            if not (k.endswith(".relative_position_index") or k.endswith(".attn_mask"))}


_PAPER = "Masked Spiking Transformer (ICCV 2023)"
_CONVERT = ("a QCFS ANN (T=1): train it with 'spikeformer train', then run the SNN with 'spikeformer convert "
            "--checkpoint RUN --steps 128'")


default_cfgs = {
    "mst_swin_t": cfg(
        input_size=(3, 224, 224), T=1, num_classes=1000, dataset="imagenet", published={"imagenet": 77.88},
        paper_params_m=28.5, paper=_PAPER, crop_pct=0.875, first_conv="patch_embed.proj",
        notes=f"{_CONVERT}. Published: 77.88 % after conversion at 128 simulation steps, 77.12 % with 75 % of the "
              "spikes masked. 28,332,514 weights + 124 QCFS thresholds, as the official build",
    ),
    "mst_swin_t_cifar": cfg(
        input_size=(3, 224, 224), T=1, num_classes=10, dataset="cifar10", paper=_PAPER, mean=MST_CIFAR_MEAN,
        std=MST_CIFAR_STD, crop_pct=1.0, first_conv="patch_embed.proj",
        notes=f"{_CONVERT}. The official CIFAR build: no BatchNorm in the MLPs, CIFAR images resized to 224 "
              "(data_kwargs img_size=224); 27,527,044 weights + 124 thresholds with 10 classes; num_classes=100 for "
              "CIFAR-100. The paper's CIFAR numbers could not be verified",
    ),
    "mst_digits": cfg(
        input_size=(1, 16, 16), T=1, num_classes=10, dataset="digits", paper=_PAPER, mean=(0.0,), std=(1.0,),
        first_conv="patch_embed.proj",
        notes=f"{_CONVERT}. Sized for the embedded 1x16x16 digits: patch 2 (8x8 tokens), windows of 4 (a shifted "
              "stage and a single-window stage), embed 32, depths 2-2, heads 2-4",
    ),
}


@register_model
def mst_swin_t(**kw):
    kw.setdefault("drop_path_rate", 0.2)
    return MaskedSpikingTransformer(**kw)


@register_model
def mst_swin_t_cifar(**kw):
    kw.setdefault("drop_path_rate", 0.2)
    kw.setdefault("mlp_norm", False)
    return MaskedSpikingTransformer(**kw)


@register_model
def mst_digits(**kw):
    kw.setdefault("in_chans", 1)
    cfg_ = dict(img_size=16, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
                drop_path_rate=0.0)
    return MaskedSpikingTransformer(**{**cfg_, **kw})
