"""Multi-dimensional attention of MA-SNN: "Attention Spiking Neural Networks" (Yao et al., TPAMI 2023).

CBAM-style gates inferred from the membrane *input current* of a layer (after conv-BN(-pool), before the
neuron), as in the official code (BICLab/Attention-SNN, ``MA_SNN/module/Attention.py``):

* temporal (TA): ``s_T = sigmoid(MLP_T(avg_{C,H,W} X) + MLP_T(max_{C,H,W} X))``, one weight per time step and
  sample, ``MLP_T``: T -> T/r_t -> T (ReLU, no bias), shared by the two branches;
* channel (CA): the same over channels, pooled over (T, H, W): one weight per channel and sample, shared by all
  time steps; ``MLP_C``: C -> C/r_c -> C;
* spatial (SA): ``sigmoid(conv_kxk([mean_{T,C} X; max_{T,C} X]))`` (2 -> 1 channels, no bias): one H x W map per
  sample, shared by all time steps and channels.

The plug-in layers (:class:`TA`, :class:`CA`, :class:`SA`, :class:`TCSA` and the pairs :class:`TCA`,
:class:`TSA`, :class:`CSA`) apply their gates in the order T -> C -> S, each computed on the running, already
attended tensor, and end with a ReLU, exactly as every official composite does. They act on ``[T, B, C, H, W]``
(and TA also on fully connected ``[T, B, C]``). The official code keeps its 1x1x1 Conv3d/Conv1d MLPs; here they
are ``nn.Linear`` (same maths; :func:`official_attention_key` maps the names, kernels are flattened).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..errors import SpikeformerError
from .blocks import module_forward


def _hidden(n: int, ratio: int, what: str) -> int:
    if ratio < 1:
        raise SpikeformerError(f"the {what} reduction ratio must be >= 1; got {ratio}")
    # The official code builds n // ratio hidden units; keep at least one so small T (e.g. T=4 with the Gesture
    # t_ratio of 5) still builds instead of failing on an empty layer.
    return max(1, n // ratio)


def _shared_mlp(n: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, n, bias=False))


class TemporalGate(nn.Module):
    """The TA weights ``s_T`` of ``x`` ``[T, B, ...]``, shaped ``[T, B, 1, ...]`` for broadcasting."""

    def __init__(self, T: int, ratio: int = 16):
        super().__init__()
        self.T = int(T)
        self.mlp = _shared_mlp(self.T, _hidden(self.T, ratio, "temporal"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[0] != self.T:
            raise SpikeformerError(
                f"temporal attention was built for T={self.T} time steps but got input of shape {tuple(x.shape)} "
                f"(expected [T={self.T}, B, C, ...]); build the model with T={x.shape[0]}"
            )
        flat = x.flatten(2)  # [T, B, C*H*W]
        avg, mx = flat.mean(2).t(), flat.max(2).values.t()  # [B, T]
        s = torch.sigmoid(self.mlp(avg) + self.mlp(mx)).t()  # [T, B]
        return s.reshape(s.shape + (1,) * (x.dim() - 2))


class ChannelGate(nn.Module):
    """The CA weights of ``x`` ``[T, B, C, ...]``, shaped ``[1, B, C, 1, ...]`` (shared over time)."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        self.channels = int(channels)
        self.mlp = _shared_mlp(self.channels, _hidden(self.channels, ratio, "channel"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[2] != self.channels:
            raise SpikeformerError(
                f"channel attention was built for {self.channels} channels but got input of shape "
                f"{tuple(x.shape)} (expected [T, B, {self.channels}, ...])"
            )
        flat = x.transpose(0, 2).flatten(2)  # [C, B, T*H*W]
        avg, mx = flat.mean(2).t(), flat.max(2).values.t()  # [B, C]
        s = torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        return s.reshape((1,) + s.shape + (1,) * (x.dim() - 3))


class SpatialGate(nn.Module):
    """The SA map of ``x`` ``[T, B, C, H, W]``, shaped ``[1, B, 1, H, W]`` (pooled over time and channels)."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        if kernel_size not in (3, 7):
            raise SpikeformerError(f"spatial attention kernel_size must be 3 or 7 (official code); got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise SpikeformerError(
                f"spatial attention needs feature maps [T, B, C, H, W]; got shape {tuple(x.shape)}"
            )
        flat = x.transpose(0, 1).flatten(1, 2)  # [B, T*C, H, W]
        pooled = torch.stack([flat.mean(1), flat.max(1).values], 1)  # [B, 2, H, W]
        return torch.sigmoid(module_forward(self.conv, pooled)).unsqueeze(0)


class MultiDimAttention(nn.Module):
    """MA-SNN attention over the dimensions named in ``dims`` (a subset of ``'TCS'``, applied in T, C, S order),
    followed by ReLU. ``x * gate`` broadcasts each gate over the dimensions it does not depend on."""

    def __init__(self, dims: str, T: int | None = None, channels: int | None = None, t_ratio: int = 16,
                 c_ratio: int = 16, kernel_size: int = 3):
        super().__init__()
        dims = dims.upper()
        if not dims or set(dims) - set("TCS"):
            raise SpikeformerError(f"attention dims must be a non-empty subset of 'TCS'; got {dims!r}")
        self.dims = "".join(d for d in "TCS" if d in dims)
        if "T" in self.dims and T is None:
            raise SpikeformerError("temporal attention needs the number of time steps T")
        if "C" in self.dims and channels is None:
            raise SpikeformerError("channel attention needs the number of channels")
        self.ta = TemporalGate(T, t_ratio) if "T" in self.dims else None
        self.ca = ChannelGate(channels, c_ratio) if "C" in self.dims else None
        self.sa = SpatialGate(kernel_size) if "S" in self.dims else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for gate in (self.ta, self.ca, self.sa):
            if gate is not None:
                x = gate(x) * x
        return torch.relu(x)

    def fused(self, x: torch.Tensor) -> torch.Tensor | None:
        """The fast path: :meth:`forward` of channels-last frames ``x`` ``[T, B, C, H, W]`` (memory ``[T, B, H, W,
        C]``) by the gate kernels (``kernels.GATE_STATS``, ``GATE_POOL``, ``GATE_APPLY``), channels-last out; ``None``
        for other layouts and dtypes and while compiling (the caller then runs :meth:`forward`).

        Three passes over the frames forward (their statistics, the spatial gate's pooling, the gating) and three
        backward, instead of PyTorch's reductions, broadcasts and copies per gate. The maths is the same: the gates are
        positive (sigmoids), so the channel gate's maximum over time of ``x * s_T`` is ``s_T`` times the per-frame
        maximum, and its mean is ``s_T``-weighted per-frame sums; the spatial gate pools ``x * s_T * s_C``; the output
        is ``relu(x * (s_T s_C) * s_S)``. The gate MLPs and the spatial convolution run in fp32 (autocast off), the
        frames stay in their dtype. Sums run in another order than :meth:`forward`'s, and where a maximum is tied its
        gradient goes to the first position in memory order."""
        if torch.compiler.is_compiling() or x.dim() != 5 or x.dtype not in (torch.float32, torch.bfloat16):
            return None
        frames = x.permute(0, 1, 3, 4, 2)  # [T, B, H, W, C]
        if not frames.is_contiguous():
            return None
        T, B, H, W, C = frames.shape
        if self.ta is not None and T != self.ta.T or self.ca is not None and C != self.ca.channels:
            return None  # forward raises the error that explains it
        x3 = frames.view(T * B, H * W, C)
        P = H * W
        with torch.autocast(x.device.type, enabled=False):
            w = None  # the per-frame channel weights s_T * s_C, [T, B, C]
            if self.ta is not None or self.ca is not None:
                S, M = kernels.select(kernels.GATE_STATS, x3)(x3)
                S, M = S.view(T, B, C), M.view(T, B, C)
                if self.ta is not None:
                    mlp = self.ta.mlp
                    s_t = torch.sigmoid(mlp(S.sum(2).t() / (P * C)) + mlp(M.amax(2).t())).t()  # [T, B]
                    w = s_t.unsqueeze(2)
                    if self.ca is not None:
                        S, M = S * w, M * w
                if self.ca is not None:
                    mlp = self.ca.mlp
                    s_c = torch.sigmoid(mlp(S.sum(0) / (T * P)) + mlp(M.max(0).values))  # [B, C]
                    w = s_c.unsqueeze(0) if w is None else w * s_c
                w = w.expand(T, B, C).reshape(T * B, C)
            else:
                w = x3.new_ones((T * B, C), dtype=torch.float32)
            if self.sa is not None:
                A, X = kernels.select(kernels.GATE_POOL, x3)(x3, w)
                A, X = A.view(T, B, P), X.view(T, B, P)
                pooled = torch.stack([A.sum(0) / (T * C), X.max(0).values], 1).view(B, 2, H, W)
                s = torch.sigmoid(self.sa.conv(pooled)).view(1, B, P).expand(T, B, P).reshape(T * B, P)
            else:
                s = x3.new_ones((T * B, P), dtype=torch.float32)
            y = kernels.select(kernels.GATE_APPLY, x3)(x3, w, s)
        return y.view(T, B, H, W, C).permute(0, 1, 4, 2, 3)

    def extra_repr(self) -> str:
        return f"dims={self.dims!r}"


class TA(MultiDimAttention):
    """Temporal-wise attention (works on conv maps ``[T, B, C, H, W]`` and FC features ``[T, B, C]``)."""

    def __init__(self, T: int, channels: int | None = None, t_ratio: int = 16, **_):
        super().__init__("T", T=T, t_ratio=t_ratio)


class CA(MultiDimAttention):
    """Channel-wise attention."""

    def __init__(self, T: int | None = None, channels: int | None = None, c_ratio: int = 16, **_):
        super().__init__("C", channels=channels, c_ratio=c_ratio)


class SA(MultiDimAttention):
    """Spatial-wise attention."""

    def __init__(self, T: int | None = None, channels: int | None = None, kernel_size: int = 3, **_):
        super().__init__("S", kernel_size=kernel_size)


class TCA(MultiDimAttention):
    def __init__(self, T: int, channels: int, t_ratio: int = 16, c_ratio: int = 16, **_):
        super().__init__("TC", T=T, channels=channels, t_ratio=t_ratio, c_ratio=c_ratio)


class TSA(MultiDimAttention):
    def __init__(self, T: int, channels: int | None = None, t_ratio: int = 16, kernel_size: int = 3, **_):
        super().__init__("TS", T=T, t_ratio=t_ratio, kernel_size=kernel_size)


class CSA(MultiDimAttention):
    """Channel then spatial attention (the ImageNet Att-MS-ResNet setting, ``c_ratio=8``)."""

    def __init__(self, T: int | None = None, channels: int | None = None, c_ratio: int = 16, kernel_size: int = 3,
                 **_):
        super().__init__("CS", channels=channels, c_ratio=c_ratio, kernel_size=kernel_size)


class TCSA(MultiDimAttention):
    """Temporal, then channel, then spatial attention (the full MA module)."""

    def __init__(self, T: int, channels: int, t_ratio: int = 16, c_ratio: int = 16, kernel_size: int = 3, **_):
        super().__init__("TCS", T=T, channels=channels, t_ratio=t_ratio, c_ratio=c_ratio, kernel_size=kernel_size)


ATTENTIONS = {"TA": TA, "CA": CA, "SA": SA, "TCA": TCA, "TSA": TSA, "CSA": CSA, "TCSA": TCSA}


def build_attention(kind: str | None, T: int, channels: int, t_ratio: int = 16, c_ratio: int = 16,
                    kernel_size: int = 3) -> nn.Module | None:
    """The plug-in attention named ``kind`` ('TA', 'CA', 'SA', 'TCA', 'TSA', 'CSA', 'TCSA'), or None for 'no'."""
    if kind is None or str(kind).lower() in ("no", "none", ""):
        return None
    key = str(kind).upper()
    if key not in ATTENTIONS:
        raise SpikeformerError(f"unknown MA-SNN attention {kind!r}; choose one of {sorted(ATTENTIONS)} or 'no'")
    return ATTENTIONS[key](T=T, channels=channels, t_ratio=t_ratio, c_ratio=c_ratio, kernel_size=kernel_size)


def official_attention_key(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Map an official attention parameter (``...ta.sharedMLP.0.weight`` with a 1x1(x1) conv kernel) to ours."""
    if ".sharedMLP." in key:
        key = key.replace(".sharedMLP.", ".mlp.")
        if value.dim() > 2:
            value = value.flatten(1)
    return key, value


__all__ = [
    "TemporalGate", "ChannelGate", "SpatialGate", "MultiDimAttention", "TA", "CA", "SA", "TCA", "TSA", "CSA",
    "TCSA", "ATTENTIONS", "build_attention", "official_attention_key",
]
