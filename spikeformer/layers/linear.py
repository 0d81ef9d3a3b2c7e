"""Opt-in fast Linear layers for CPU training: :func:`use_onednn_linear` swaps a model's ``nn.Linear`` modules for
:class:`OneDNNLinear`, whose fp32 forward and input-gradient GEMMs run on oneDNN instead of the BLAS behind
``torch.mm``.

Why it is opt-in for models and on by default in ``spikeformer train`` (config ``fast_linear``): on CPUs where the
BLAS takes a slow path (MKL on AMD processors) oneDNN's fp32 GEMM is about twice as fast (``benchmarks/RESULTS.md``),
but it sums in another order, so outputs differ from ``nn.Linear`` by a few ulps. A one-ulp difference in a
pre-activation can flip a spike, so a model checked bit for bit against official code keeps ``nn.Linear``
(``spikeformer.create_model`` builds exactly that); training does not need those bits. Parameters, buffers and
``state_dict`` keys are unchanged, so checkpoints move freely between the two. Under bf16 autocast, on GPUs, and in
builds without oneDNN the layer is plain ``F.linear``.
"""

from __future__ import annotations

from torch import nn

from ..neurons._kernels_linear import token_linear


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` with its fp32 CPU GEMMs on oneDNN (same parameters and state_dict)."""

    def forward(self, x):
        return token_linear(self, x)


def use_onednn_linear(model: nn.Module) -> int:
    """Switch every ``nn.Linear`` in ``model`` (exact class, not subclasses) to :class:`OneDNNLinear` in place;
    returns how many were switched."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
    return n


def use_exact_linear(model: nn.Module) -> int:
    """Undo :func:`use_onednn_linear`: back to ``nn.Linear``; returns how many were switched."""
    n = 0
    for m in model.modules():
        if type(m) is OneDNNLinear:
            m.__class__ = nn.Linear
            n += 1
    return n
