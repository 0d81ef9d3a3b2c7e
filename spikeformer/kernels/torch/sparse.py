"""Linear layers and 3x3 convolutions on spikes as dense products: the reference of the sparse operations and
their fallback.

The operations are defined as the compiled ones compute them: the input, the weight and the bias are taken as the
compute ``dtype`` has them (bf16 under autocast), products are summed in fp32 and the result is rounded to
``dtype`` once. For integer-valued inputs and weights (spikes, spike counts) every sum is exact, so a backend
that skips the zeros gives the same bits.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _as(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype).float()


def sparse_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype,
                  max_density: float = 1.0) -> Optional[torch.Tensor]:
    """``x2d @ weight^T + bias`` for ``x2d`` ``[R, K]``, ``[R, Nout]`` in ``dtype``. ``max_density`` lets a backend
    that lists the nonzeros give up (return ``None``) on denser input; the dense product never does."""
    with torch.autocast(x2d.device.type, enabled=False):
        return F.linear(_as(x2d, dtype), _as(weight, dtype), _as(bias, dtype)).to(dtype)


def sparse_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype,
                   max_density: float = 1.0) -> Optional[torch.Tensor]:
    """A 3x3 convolution, stride 1, padding 1, of frames ``x`` ``[M, Cin, H, W]``: ``[M, Cout, H, W]``
    channels-last in ``dtype``. ``max_density`` as in :func:`sparse_linear`."""
    with torch.autocast(x.device.type, enabled=False):
        y = F.conv2d(_as(x, dtype), _as(weight, dtype), _as(bias, dtype), padding=1)
    return y.to(dtype).contiguous(memory_format=torch.channels_last)
