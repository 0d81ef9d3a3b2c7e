"""Token projections and the fast CPU GEMMs of training. :func:`use_onednn_linear` swaps a model's ``nn.Linear`` modules for
:class:`OneDNNLinear`, whose fp32 forward and input-gradient GEMMs run on oneDNN instead of the BLAS behind
``torch.mm``; :func:`use_fast_kernels` does that and also moves every ``TokenBN`` to its flat (vectorised) layout.

They are part of the ``fast`` numerics (:mod:`spikeformer.layers.numerics`, the default): on CPUs where the
BLAS takes a slow path (MKL on AMD processors) oneDNN's fp32 GEMM is about twice as fast (``benchmarks/RESULTS.md``),
but it sums in another order, so outputs differ from ``nn.Linear`` by a few ulps. A one-ulp difference in a
pre-activation can flip a spike, so a model checked bit for bit against official code keeps ``nn.Linear``
(``numerics='exact'``); training does not need those bits. Parameters, buffers and
``state_dict`` keys are unchanged, so checkpoints move freely between the two. Under bf16 autocast, on GPUs, and in
builds without oneDNN the layer is plain ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.cpu.linear import linear as _linear, token_linear
from .numerics import NumericsAware, set_numerics


class TokenLinear(NumericsAware, nn.Linear):
    """A token-wise projection ``[..., in] -> [..., out]`` that knows which operation the official code used for it.

    ``official_op`` is ``"linear"`` (``nn.Linear`` on channel-last tokens), ``"conv1d"`` (a 1x1 ``Conv1d`` on
    ``[T*B, C, N]``) or ``"conv2d"`` (a 1x1 ``Conv2d`` on ``[T*B, C, H, W]``). The parameters are always those of
    ``nn.Linear`` (``weight [out, in]``), so checkpoints of both numerics are the same file; official Conv kernels
    ``[out, in, 1(, 1)]`` are squeezed by the families' ``checkpoint_filter_fn``. In fast numerics the layer is a
    oneDNN GEMM on tokens; in exact numerics the blocks (:func:`spikeformer.layers.blocks.linear_bn_neuron`) run the
    official operation on the official layout, and a bare call runs :meth:`official`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, official_op: str = "linear", **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        if official_op not in ("linear", "conv1d", "conv2d"):
            raise ValueError(f"official_op must be 'linear', 'conv1d' or 'conv2d'; got {official_op!r}")
        self.official_op = official_op

    def official(self, x_cf: torch.Tensor) -> torch.Tensor:
        """The official operation on channel-first input: ``[M, in, N]`` (conv1d), ``[M, in, H, W]`` (conv2d) or
        ``[..., in]`` (linear)."""
        if self.official_op == "conv1d":
            return F.conv1d(x_cf, self.weight.unsqueeze(-1), self.bias)
        if self.official_op == "conv2d":
            return F.conv2d(x_cf, self.weight[:, :, None, None], self.bias)
        return F.linear(x_cf, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast or self.official_op == "linear" or x.dim() < 2:
            return token_linear(self, x) if self.fast else F.linear(x, self.weight, self.bias)
        lead = x.shape[:-2]
        cf = x.reshape(-1, *x.shape[-2:]).transpose(1, 2).contiguous()  # [M, in, N], the official layout
        if self.official_op == "conv2d":
            cf = cf.unsqueeze(-1)
        y = self.official(cf).reshape(cf.shape[0], self.out_features, -1)
        return y.transpose(1, 2).reshape(*lead, x.shape[-2], self.out_features)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` with its fp32 CPU GEMMs on oneDNN (same parameters and state_dict)."""

    def forward(self, x):
        return _linear(x, self.weight, self.bias)


def _swap_class(model: nn.Module, src: type, dst: type) -> int:
    n = 0
    for m in model.modules():
        if type(m) is src:
            m.__class__ = dst
            n += 1
    return n


def use_onednn_linear(model: nn.Module) -> int:
    """Switch every ``nn.Linear`` in ``model`` (exact class, not subclasses) to :class:`OneDNNLinear` in place;
    returns how many were switched."""
    return _swap_class(model, nn.Linear, OneDNNLinear)


def use_exact_linear(model: nn.Module) -> int:
    """Undo :func:`use_onednn_linear`: back to ``nn.Linear``; returns how many were switched."""
    return _swap_class(model, OneDNNLinear, nn.Linear)


def use_fast_kernels(model: nn.Module) -> int:
    """``set_numerics(model, "fast")``: every numerics-aware block takes its fast kernels and every ``nn.Linear`` becomes
    a :class:`OneDNNLinear`. Outputs then differ from the official code's by rounding only; returns how many modules
    were switched."""
    return set_numerics(model, "fast")


def use_exact_kernels(model: nn.Module) -> int:
    """``set_numerics(model, "exact")``: the official code's operations and layouts (its logits bit for bit)."""
    return set_numerics(model, "exact")
