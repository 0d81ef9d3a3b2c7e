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


def _swap_class(model: nn.Module, src: type, dst: type) -> int:
    n = 0
    for m in model.modules():
        if type(m) is src:
            m.__class__ = dst
            n += 1
    return n


def _set_fast(model: nn.Module, fast: bool) -> int:
    # modules with a boolean ``fast`` attribute (TokenBN, Spikformer's SPS stem) have a faster, non-bit-exact path
    n = 0
    for m in model.modules():
        if isinstance(getattr(m, "fast", None), bool) and m.fast != fast:
            m.fast = fast
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
    """The fast CPU numerics ``spikeformer train`` uses (config ``fast_kernels``): every ``nn.Linear`` becomes a
    :class:`OneDNNLinear`, every ``TokenBN`` takes PyTorch's vectorised flat kernel in fp32 too (instead of the
    transposed view that rounds like the official CIFAR Spikformer), and Spikformer's convolution stem runs on
    channels-last frames. Outputs then differ from the official code's by rounding only; returns how many modules
    were switched."""
    return use_onednn_linear(model) + _set_fast(model, True)


def use_exact_kernels(model: nn.Module) -> int:
    """Undo :func:`use_fast_kernels` (``nn.Linear``, the exact TokenBN and stem layouts: the official code's bits)."""
    return use_exact_linear(model) + _set_fast(model, False)
