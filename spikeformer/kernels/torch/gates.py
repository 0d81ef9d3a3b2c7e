"""The pooled statistics and the gating of MA-SNN's multi-dimensional attention (``layers/masnn.py``), in PyTorch:
the reference of the three gate operations and their fallback. Frames are channels-last blocks ``x`` ``[N, P, C]``
(``N = T * B`` frames of ``P = H * W`` pixels); statistics, weights and scales are fp32.

* ``gate_stats(x) -> (S, M)``: the sum and the maximum over pixels, ``[N, C]`` each;
* ``gate_pool(x, w) -> (A, X)``: the sum and the maximum over channels of ``x * w[:, None, :]``, ``[N, P]`` each;
* ``gate_apply(x, w, s) -> y``: ``relu(x * w[:, None, :] * s[:, :, None])`` in ``x``'s dtype.

A maximum's gradient goes to one position of the maximum (the first, in the compiled kernels).
"""

from __future__ import annotations

import torch


def gate_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    return xf.sum(1), xf.max(1).values


def gate_pool(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = x.float() * w[:, None, :]
    return y.sum(2), y.max(2).values


def gate_apply(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.relu(x.float() * w[:, None, :] * s[:, :, None]).to(x.dtype)
