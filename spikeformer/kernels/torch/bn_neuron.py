"""BatchNorm followed by a neuron, unfused: the reference of the BatchNorm + neuron operation and its fallback.

``x`` is ``[T, ..., C]`` with the channel last (tokens as they are; channels-last frames ``[T, B, C, H, W]`` as
their free ``permute(0, 1, 3, 4, 2)`` view), and BatchNorm normalises every channel over all other dimensions.
``training=True`` normalises with the batch statistics and returns them (mean and biased variance, float64) so the
caller can update its running statistics; ``training=False`` uses ``running_mean`` / ``running_var`` and returns
``None`` for both.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .neuron import neuron


def batch_norm(x: torch.Tensor, weight, bias, running_mean, running_var, eps: float, training: bool) -> torch.Tensor:
    """``x`` ``[..., C]`` normalised per channel."""
    rm, rv = (None, None) if training else (running_mean, running_var)
    return F.batch_norm(x.reshape(-1, x.shape[-1]), rm, rv, weight, bias, training, 0.0, eps).view(x.shape)


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance (float64) of ``x`` ``[..., C]``."""
    var, mean = torch.var_mean(x.detach().reshape(-1, x.shape[-1]).double(), dim=0, correction=0)
    return mean, var


def bn_neuron(x, weight, bias, running_mean, running_var, eps: float, training: bool, spec, surrogate,
              bias_left_out: Optional[torch.Tensor] = None):
    """``(spikes, mean, var)`` of the neuron ``spec`` (LIF or IF: a fixed rate) driven by BatchNorm of ``x``.
    ``bias_left_out`` is a bias the producer of ``x`` did not add; with batch statistics the mean absorbs it, so it
    changes nothing."""
    if spec.leaky and spec.tau is None:
        raise ValueError("bn_neuron runs a neuron with a fixed rate (LIF, IF); a PLIF's rate is a tensor it does "
                         "not take: run BatchNorm, then the neuron")
    if not training and bias_left_out is not None:
        x = x + bias_left_out.to(x.dtype)
    y = batch_norm(x, weight, bias, running_mean, running_var, eps, training)
    spikes, _ = neuron(y, None, None, spec, surrogate, want_state=False)
    if not training:
        return spikes, None, None
    mean, var = batch_stats(x)
    return spikes, mean, var
