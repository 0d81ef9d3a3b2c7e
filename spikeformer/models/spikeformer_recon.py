"""SpikeFormer: "SpikeFormer: Image Reconstruction from the Sequence of Spike Camera Based on Transformer" (She and
Qing, ICIGP 2022), as its official code (O-OoOvO/SpikeFormer, ``Model/SpikeFormer.py``) computes it.

Not a spiking network and not a classifier: an image-to-image transformer that turns a window of binary frames of a
spike camera (:mod:`spikeformer.data.spikecam`) into the image at the window's key frame.

1. stem: a 3x3 convolution from the ``T`` frames (taken as channels, ``[B, T, H, W]``) to 64 channels and GELU, then
   ``PixelShuffle(4)``: the "enlarged binary image" of the paper, 4 channels at 4H x 4W;
2. a MiT (SegFormer) encoder of four stages: an overlapping patch embedding (``nn.Unfold`` then a 1x1 convolution;
   kernel/stride/padding 7/4/3 then 3/2/1), then blocks of ``x + attn(norm(x))`` and ``x + mlp(norm(x))`` at
   H x W, H/2, H/4, H/8. Differences from lucidrains' segformer-pytorch, all kept: the norm is ``InstanceNorm2d``
   with affine parameters; the efficient self-attention (keys and values from a strided ``reduction_ratio``
   convolution) ends in GELU; the MixFFN is 1x1, GELU, depthwise 3x3, GELU, 1x1, GELU, 1x1, GELU;
3. fusion: per stage a 1x1 convolution to ``decoder_dim`` channels, ``PixelShuffle(2**i)`` back to H x W, GELU
   (so ``decoder_dim / 4**i`` channels each);
4. the restore head: 1x1 convolution, GELU, 1x1 convolution to ``out_chans`` (the image, in [-1, 1]).

Input convention of the official data loader: spikes padded with zero rows to a multiple of 8 (250 -> 256: three
rows above and three below), then mapped to -1/+1 (``x * 2 - 1``, so padded rows are -1); the output is cropped
back, clamped to [-1, 1] and mapped to [0, 255]. :func:`prepare_spikes`, :meth:`SpikeFormerRecon.forward_spikes`
and :meth:`SpikeFormerRecon.reconstruct` do exactly that; ``forward`` takes the prepared input, as the official
``forward`` does.

Numerics: ``exact`` runs the official operations (``nn.Unfold`` + 1x1 convolution, attention as two ``einsum``
products around a softmax) and gives the official outputs bit for bit; ``fast`` runs each patch embedding as one
strided convolution with the same weights and the attention as ``scaled_dot_product_attention`` (rounding only).
Official checkpoints (``SaveModel``'s dict with ``model_state_dict``) are read by :func:`read_official_checkpoint`
and renamed by :func:`checkpoint_filter_fn`; the published configuration has 7,581,441 parameters.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeformerError
from ..kernels.cpu import bf16
from ..layers.blocks import module_forward
from ..layers.numerics import NumericsAware, wants_fast
from .registry import cfg, register_model

_PAPER = "SpikeFormer: Image Reconstruction from the Sequence of Spike Camera Based on Transformer (ICIGP 2022)"
STAGE_KERNEL_STRIDE_PAD = ((7, 4, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1))
MULTIPLE = 8  # input sides must divide by the encoder's total stride (4 * 2 * 2 * 2 over the 4x enlarged image)


def _four(v, name: str) -> tuple:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,) * 4
    if len(t) != 4:
        raise SpikeformerError(f"{name} needs one value or four (one per stage); got {v!r}")
    return t


# ------------------------------------------------------------------------------------------------------- blocks
class OverlapPatchEmbed(NumericsAware, nn.Module):
    """``nn.Unfold(k, s, p)`` then a 1x1 convolution (exact), or the same weights as one k x k convolution of stride
    s (fast): both compute ``sum_{c,i,j} w[o, c*k*k + i*k + j] x[c, s*y+i-p, s*x+j-p]``."""

    def __init__(self, dim_in: int, dim_out: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.dim_in, self.kernel, self.stride, self.padding = dim_in, kernel, stride, padding
        self.proj = nn.Conv2d(dim_in * kernel * kernel, dim_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        k, s, p = self.kernel, self.stride, self.padding
        if wants_fast(self, x):
            w = self.proj.weight.view(self.proj.out_channels, C, k, k)
            return bf16.apply(lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride=s, padding=p), x, w, self.proj.bias)
        h, w = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        return module_forward(self.proj, F.unfold(x, k, stride=s, padding=p).view(B, C * k * k, h, w))


class EfficientSelfAttention(NumericsAware, nn.Module):
    """Softmax attention of every position over keys and values from a ``reduction_ratio``-strided convolution
    (SegFormer's spatial reduction), scale ``(dim // heads) ** -0.5``; the output projection ends in GELU."""

    def __init__(self, dim: int, heads: int, reduction_ratio: int):
        super().__init__()
        if dim % heads:
            raise SpikeformerError(f"a stage of width {dim} cannot have {heads} heads (the width must divide)")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_q = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_kv = nn.Conv2d(dim, dim * 2, reduction_ratio, stride=reduction_ratio, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        heads = self.heads
        q, k, v = (module_forward(self.to_q, x), *module_forward(self.to_kv, x).chunk(2, dim=1))
        # einops' 'b (h c) x y -> (b h) (x y) c' step by step: k and v are chunks of one tensor, so the last reshape
        # copies, and the copy's layout decides which GEMM kernel (and rounding) the products get
        q, k, v = (t.reshape(B, heads, C // heads, *t.shape[-2:]).permute(0, 1, 3, 4, 2)
                   .reshape(B * heads, -1, C // heads) for t in (q, k, v))
        if bf16.active(x):  # bf16 products emulated on this CPU: fp32 products of the bf16 values
            out = bf16.call(F.scaled_dot_product_attention, q, k, v)
        elif wants_fast(self, x):
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (torch.einsum("b i d, b j d -> b i j", q, k) * self.scale).softmax(dim=-1)
            out = torch.einsum("b i j, b j d -> b i d", attn, v)
        out = out.transpose(1, 2).reshape(B, C, H, W)
        return self.act(module_forward(self.proj, out))


class MixFFN(nn.Module):
    """1x1 (x ``expansion``), GELU, depthwise 3x3, GELU, 1x1, GELU, 1x1 back, GELU."""

    def __init__(self, dim: int, expansion: int):
        super().__init__()
        hidden = dim * expansion
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.pw = nn.Conv2d(hidden, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(module_forward(self.fc1, x))
        x = self.act(module_forward(self.dw, x))
        x = self.act(module_forward(self.pw, x))
        return self.act(module_forward(self.fc2, x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (norms are InstanceNorm2d)."""

    def __init__(self, dim: int, heads: int, expansion: int, reduction_ratio: int):
        super().__init__()
        self.norm1 = nn.InstanceNorm2d(dim, affine=True)
        self.attn = EfficientSelfAttention(dim, heads, reduction_ratio)
        self.norm2 = nn.InstanceNorm2d(dim, affine=True)
        self.mlp = MixFFN(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x)) + x
        return self.mlp(self.norm2(x)) + x


class Stage(nn.Module):
    def __init__(self, dim_in: int, dim: int, kernel_stride_pad: tuple, depth: int, heads: int, expansion: int,
                 reduction_ratio: int):
        super().__init__()
        self.embed = OverlapPatchEmbed(dim_in, dim, *kernel_stride_pad)
        self.blocks = nn.ModuleList(Block(dim, heads, expansion, reduction_ratio) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return x


# -------------------------------------------------------------------------------------------------------- model
def prepare_spikes(spikes: torch.Tensor, multiple: int = MULTIPLE) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Spike windows ``[B, T, H, W]`` of 0/1 -> the model's input: zero rows/columns added to reach a multiple of
    ``multiple`` (half before, half after: 250 -> 3 + 250 + 3), then ``x * 2 - 1``. Returns the input and the
    padding ``(top, bottom, left, right)``."""
    if spikes.dim() != 4:
        raise SpikeformerError(f"spike windows must be [batch, frames, height, width]; got {tuple(spikes.shape)}")
    H, W = spikes.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    x = spikes.float()
    if ph or pw:
        x = F.pad(x, (pad[2], pad[3], pad[0], pad[1]))
    return x * 2 - 1, pad


def crop_padding(y: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`prepare_spikes`'s padding ``(top, bottom, left, right)`` on the last two dims of ``y``."""
    t, b, l, r = pad
    return y[..., t: y.shape[-2] - b, l: y.shape[-1] - r]


class SpikeFormerRecon(NumericsAware, nn.Module):
    """The SpikeFormer reconstruction network; ``forward(x)`` maps a prepared window ``[B, T, H, W]`` (values -1/+1,
    H and W multiples of 8) to ``[B, out_chans, H, W]`` in the [-1, 1] image scale, as the official ``forward``."""

    task = "reconstruct"

    def __init__(self, T: int = 65, dims: Sequence[int] = (32, 64, 160, 256), heads: Sequence[int] = (1, 2, 5, 8),
                 ff_expansion: Sequence[int] = (8, 8, 4, 4), reduction_ratio: Sequence[int] = (8, 4, 2, 1),
                 num_layers=2, stem_dim: int = 64, decoder_dim: int = 256, out_chans: int = 1):
        super().__init__()
        dims, heads, ff_expansion, reduction_ratio, num_layers = (
            _four(v, n) for v, n in ((dims, "dims"), (heads, "heads"), (ff_expansion, "ff_expansion"),
                                     (reduction_ratio, "reduction_ratio"), (num_layers, "num_layers")))
        if stem_dim % 16:
            raise SpikeformerError(f"stem_dim must divide by 16 (PixelShuffle(4) makes stem_dim/16 channels); "
                                   f"got {stem_dim}")
        if decoder_dim % 4 ** 3:
            raise SpikeformerError(f"decoder_dim must divide by 64 (the last stage is PixelShuffle(8)); "
                                   f"got {decoder_dim}")
        self.T, self.in_chans, self.out_chans = T, T, out_chans
        self.num_classes = out_chans  # the registry's name for the output channels
        self.dims = dims
        self.stem = nn.Conv2d(T, stem_dim, 3, 1, 1)
        self.stem_act = nn.GELU()
        self.enlarge = nn.PixelShuffle(4)
        ins = (stem_dim // 16, *dims[:-1])
        self.stages = nn.ModuleList(
            Stage(ins[i], dims[i], STAGE_KERNEL_STRIDE_PAD[i], num_layers[i], heads[i], ff_expansion[i],
                  reduction_ratio[i]) for i in range(4))
        self.fuse = nn.ModuleList(nn.Conv2d(d, decoder_dim, 1) for d in dims)
        self.fuse_act = nn.GELU()
        self.head_fc1 = nn.Conv2d(sum(decoder_dim // 4 ** i for i in range(4)), decoder_dim, 1)
        self.head_act = nn.GELU()
        self.head_fc2 = nn.Conv2d(decoder_dim, out_chans, 1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder outputs ``[B, dims[i], H / 2**i, W / 2**i]`` of a prepared input."""
        if x.dim() != 4 or x.shape[1] != self.T:
            raise SpikeformerError(f"{type(self).__name__} takes windows of {self.T} frames [B, {self.T}, H, W]; "
                                   f"got {tuple(x.shape)}")
        if x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise SpikeformerError(f"height and width must be multiples of {MULTIPLE}, got {tuple(x.shape[-2:])}; "
                                   "prepare_spikes() pads them")
        x = self.enlarge(self.stem_act(module_forward(self.stem, x)))
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = [self.fuse_act(F.pixel_shuffle(module_forward(conv, o), 2 ** i))
                 for i, (o, conv) in enumerate(zip(self.forward_stages(x), self.fuse))]
        return module_forward(self.head_fc2, self.head_act(module_forward(self.head_fc1, torch.cat(fused, dim=1))))

    def forward_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        """Spike windows ``[B, T, H, W]`` of 0/1 (any H, W) -> the output ``[B, out_chans, H, W]`` in the [-1, 1]
        scale, unclamped (what the training losses compare with ``2 * image - 1``)."""
        x, pad = prepare_spikes(spikes)
        return crop_padding(self(x), pad)

    @torch.no_grad()
    def reconstruct(self, spikes: torch.Tensor) -> torch.Tensor:
        """Images ``[B, out_chans, H, W]`` in [0, 1] from spike windows ``[B, T, H, W]`` of 0/1."""
        return ((self.forward_spikes(spikes).clamp(-1, 1) + 1) / 2).float()


# ---------------------------------------------------------------------------------------------- official files
_RENAMES = [
    (r"^channel_transform\.0\.", "stem."),
    (r"^mit\.stages\.(\d)\.1\.", r"stages.\1.embed.proj."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.0\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.0\.fn\.to_out\.0\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.0\.fn\.", r"stages.\1.blocks.\2.attn."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.1\.norm\.", r"stages.\1.blocks.\2.norm2."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.1\.fn\.net\.0\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.1\.fn\.net\.2\.net\.0\.", r"stages.\1.blocks.\2.mlp.dw."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.1\.fn\.net\.2\.net\.2\.", r"stages.\1.blocks.\2.mlp.pw."),
    (r"^mit\.stages\.(\d)\.2\.(\d+)\.1\.fn\.net\.3\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^to_fused\.(\d)\.0\.", r"fuse.\1."),
    (r"^to_restore\.0\.", "head_fc1."),
    (r"^to_restore\.2\.", "head_fc2."),
]


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def checkpoint_filter_fn(state_dict: dict, model: Optional[nn.Module] = None) -> dict:
    """Rename the official ``SpikeFormer`` state_dict's keys to ours (``module.`` prefixes of DataParallel
    removed); keys already ours pass through."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    return {_rename(k): v for k, v in sd.items()}


def read_official_checkpoint(path) -> dict:
    """The ``model_state_dict`` of an official checkpoint (``utils.SaveModel``: also ``pre_epoch``, ``performance``
    and the optimizer state), read with ``torch.load(weights_only=True)`` on the CPU. Its ``performance`` holds numpy
    float64 scalars, so numpy's scalar reconstructor and dtype classes are allowed, and nothing else."""
    import numpy as np

    allowed = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            allowed.append(getattr(__import__(mod, fromlist=["scalar"]), "scalar"))
        except (ImportError, AttributeError):
            pass
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SpikeformerError(f"checkpoint not found: {path}") from None
    except Exception as e:  # UnpicklingError for code objects, RuntimeError/EOFError for truncated files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpikeformerError(f"{path}: cannot read it as a PyTorch checkpoint with weights_only=True ({msg}); the "
                               "file may be truncated, or it stores Python objects we refuse to unpickle") from None
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SpikeformerError(f"{path}: no state_dict found (expected SaveModel's dict with 'model_state_dict')")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------------------------- registry
def _cfg(**kw) -> dict:
    return cfg(task="reconstruct", num_classes=1, mean=(0.5,), std=(0.5,), first_conv="stem", classifier="head_fc2",
               paper=_PAPER, **kw)


default_cfgs = {
    "spikeformer_recon": _cfg(
        input_size=(1, 250, 400), T=65, dataset="spike-reds", paper_params_m=7.58,
        notes="the official configuration (train.py: 65-frame windows, MiT-B0 encoder, decoder 256); T is the window "
              "length, num_classes the output channels"),
    "spikeformer_recon_digits": _cfg(
        input_size=(1, 32, 32), T=33, dataset="spikecam-digits",
        notes="the embedded default: a small SpikeFormer for 32x32 simulated spike-camera digits, 33-frame windows"),
}


def _create(T: int, num_classes: int = 1, **kw) -> SpikeFormerRecon:
    if num_classes < 1:
        raise SpikeformerError("a reconstruction model needs at least one output channel (num_classes >= 1)")
    return SpikeFormerRecon(T=T, out_chans=num_classes, **kw)


@register_model
def spikeformer_recon(T: int = 65, num_classes: int = 1, **kw) -> SpikeFormerRecon:
    return _create(T, num_classes, **kw)


@register_model
def spikeformer_recon_digits(T: int = 33, num_classes: int = 1, **kw) -> SpikeFormerRecon:
    kw.setdefault("dims", (16, 32, 64, 96))
    kw.setdefault("heads", (1, 2, 4, 4))
    kw.setdefault("ff_expansion", (4, 4, 4, 4))
    kw.setdefault("num_layers", 1)
    kw.setdefault("stem_dim", 32)
    kw.setdefault("decoder_dim", 64)
    return _create(T, num_classes, **kw)
