"""Weight initialisation shared by the model families.

:func:`trunc_normal_` draws the same numbers as ``timm.layers.trunc_normal_`` (which every official repository
calls) for the same RNG state, without importing timm (and, through it, torchvision) when a model is built. Note
that ``a`` and ``b`` are absolute bounds, not multiples of ``std``, as in timm.
"""

from __future__ import annotations

import math

import torch


def _std_normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` in place from N(mean, std^2) truncated to [a, b] (inverse-CDF sampling)."""
    lo, hi = _std_normal_cdf((a - mean) / std), _std_normal_cdf((b - mean) / std)
    # a uniform sample of the CDF interval, mapped to erf's domain [-1, 1] and inverted there
    tensor.uniform_(2.0 * lo - 1.0, 2.0 * hi - 1.0)
    tensor.erfinv_()
    tensor.mul_(std * math.sqrt(2.0)).add_(mean)
    return tensor.clamp_(min=a, max=b)
