"""The quantisation-clip-floor-shift activation (QCFS) of ANNs trained for conversion, and Random Spike Masking.

QCFS (Bu et al., "Optimal ANN-SNN conversion for high-accuracy and ultra-low-latency spiking neural networks",
ICLR 2022, Eq. 15), as the Masked Spiking Transformer's ``MyFloor`` computes it::

    y = up * clamp(floor(x / up * L + 0.5) / L, 0, 1)

``L`` levels, a learnable threshold ``up`` (one scalar per activation, a ``[1]`` parameter as in the official
state_dicts) and a straight-through floor: the gradient of ``floor`` is taken as 1, so ``x`` receives the upstream
gradient inside ``(-up / 2L, up]`` and ``up`` learns through the division and the rescaling. The ``+ 0.5`` shift is
what makes an IF neuron whose membrane starts at half the threshold reproduce the activation in expectation
(:func:`spikeformer.convert.ann_to_snn`).

Random Spike Masking (MST, Wang et al., ICCV 2023, Sec. 3.3): ``x * (rand(x.shape) > ratio)``, without rescaling,
in training and at inference. The draw is the official one (``torch.rand`` of the default dtype on ``x``'s device,
one call per masked tensor), so under the same seed the masks are the official code's. At ratio 0 nothing is drawn
and ``x`` is returned unchanged: the official mask would still drop an element whenever ``rand`` returns exactly 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SpikeformerError


class _GradFloor(torch.autograd.Function):
    """``floor`` with the straight-through gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.floor()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _clip01(z: torch.Tensor) -> torch.Tensor:
    """``clamp(z, 0, 1)`` whose gradient is 1 on the closed interval, bounds included: the subgradient of
    ``torch.clamp`` in the PyTorch the official code pins (1.12). Newer PyTorch passes 0 at the bounds, and every
    input of level 0 lands exactly on the lower bound, so q, k and attention activations that start below
    ``up / 2L`` would never receive a gradient."""
    inside = (z >= 0) & (z <= 1)
    return torch.where(inside, z, z.detach().clamp(0, 1))


def qcfs(x: torch.Tensor, up: torch.Tensor, levels: int) -> torch.Tensor:
    """The QCFS activation with threshold ``up`` (a tensor broadcastable to ``x``) and ``levels`` steps."""
    x = x / up
    x = _GradFloor.apply(x * levels + 0.5) / levels
    return _clip01(x) * up


class QCFS(nn.Module):
    """QCFS activation with ``levels`` quantisation steps and a learnable threshold ``up`` (initially
    ``threshold``). State_dict key: ``up`` of shape ``[1]``."""

    def __init__(self, levels: int = 16, threshold: float = 2.0):
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise SpikeformerError(f"QCFS needs a positive integer number of levels; got {levels!r}")
        if not float(threshold) > 0:
            raise SpikeformerError(f"QCFS needs a positive threshold; got {threshold!r}")
        self.levels = int(levels)
        self.up = nn.Parameter(torch.tensor([float(threshold)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qcfs(x, self.up, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, up={float(self.up.detach()[0]):.4g}"


def check_ratio(ratio: float) -> float:
    r = float(ratio)
    if not 0.0 <= r < 1.0:
        raise SpikeformerError(f"the masking ratio is the fraction of spikes dropped, in [0, 1); got {ratio!r}")
    return r


def mask_spikes(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Random Spike Masking: every element is kept when a uniform draw exceeds ``ratio`` (no rescaling)."""
    if ratio <= 0:
        return x
    return x * torch.rand(x.shape, device=x.device).gt(ratio)


__all__ = ["QCFS", "check_ratio", "mask_spikes", "qcfs"]
