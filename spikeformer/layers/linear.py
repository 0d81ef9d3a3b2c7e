"""Opt-in fast CPU kernels for training. :func:`use_onednn_linear` swaps a model's ``nn.Linear`` modules for
:class:`OneDNNLinear`, whose fp32 forward and input-gradient GEMMs run on oneDNN instead of the BLAS behind
``torch.mm``; :func:`use_fast_kernels` does that and also moves every ``TokenBN`` to its flat (vectorised) layout.

Why they are opt-in for models and on by default in ``spikeformer train`` (config ``fast_kernels``): on CPUs where the
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


def _switchable(m: nn.Module) -> bool:
    # modules with a boolean ``fast`` attribute (TokenBN, Spikformer's SPS stem) have a faster, non-bit-exact path
    return isinstance(getattr(m, "fast", None), bool)


def use_fast_kernels(model: nn.Module) -> int:
    """The fast CPU numerics ``spikeformer train`` uses (config ``fast_kernels``): every ``nn.Linear`` becomes a
    :class:`OneDNNLinear`, every ``TokenBN`` takes PyTorch's vectorised flat kernel in fp32 too (instead of the
    transposed view that rounds like the official CIFAR Spikformer), and Spikformer's convolution stem runs on
    channels-last frames. Outputs then differ from the official code's by rounding only; returns how many modules
    were switched."""
    n = use_onednn_linear(model)
    for m in model.modules():
        if _switchable(m) and not m.fast:
            m.fast = True
            n += 1
    return n


def use_exact_kernels(model: nn.Module) -> int:
    """Undo :func:`use_fast_kernels` (``nn.Linear``, the exact TokenBN and stem layouts: the official code's bits)."""
    n = use_exact_linear(model)
    for m in model.modules():
        if _switchable(m) and m.fast:
            m.fast = False
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
