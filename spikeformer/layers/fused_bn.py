"""BatchNorm followed by a spiking neuron (conv/linear -> BN -> LIF, the pattern of every spiking transformer), run
as one compiled CPU kernel where it can be.

:func:`bn_neuron` computes ``neuron(bn(x))``. On the fast path (``fuse``: fast kernels or reduced precision, see
below) the compiled kernel of ``kernels/cpu/bn_neuron.cpp`` takes the BatchNorm into the neuron recursion: in
training, one pass computes the per-channel statistics and a second normalises each input on the fly as the
membrane integrates it, so the BatchNorm output is never written, read or kept for backward; backward recomputes
the membrane from ``x``, runs BPTT and adds up BatchNorm's two per-channel sums in the same pass, then turns the
result into ``dL/dx`` in place. Autograd keeps ``x`` alone instead of ``x`` and the BatchNorm output. In eval mode
the running statistics become a per-channel scale and shift of the neuron's input (inference).

Numerics: the normalised input is rounded to ``x``'s dtype, as an unfused BatchNorm output stored in that dtype is;
the statistics are summed in another order than PyTorch's kernel (shifted sums, float64 across chunks), so a
pre-activation may differ by an ulp and flip a spike. That is why the exact path (fp32 without fast kernels, whose
spikes must equal the official code's) never fuses. Running statistics, ``num_batches_tracked`` and the momentum
(``None``: cumulative average) follow ``nn.BatchNorm``.

Where the kernel cannot run (no compiler, ``SPIKEFORMER_NATIVE=0``, another device or dtype, PLIF or a custom
neuron or surrogate, SyncBatchNorm, a layout without the channel innermost, an eval-mode call that needs
gradients, a forward or backward hook on either module, which must see its call) the two modules run one after
the other, as before.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as M

from .. import kernels
from ..kernels.cpu import bf16 as _bf16
from ..kernels.cpu import linear_bn as _linear_bn
from ..neurons import _kernels, _kernels_linear, _native
from ..neurons.nodes import IF, LIF
from ..neurons.surrogate import ATan, Sigmoid
from .linear import OneDNNLinear, TokenLinear
from .norm import TokenBN
from .sparse import spike_linear
from .time import materialize, seq_apply, shared_step, time_invariant


def _channel_innermost(bn: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``x``'s memory is ``[..., C]`` in the layout ``bn`` normalises."""
    if type(bn) is TokenBN:
        return x.dim() >= 2 and x.shape[-1] == bn.num_features and x.is_contiguous()
    if type(bn) is nn.BatchNorm2d:  # frames [T, B, C, H, W], each frame channels-last
        return (x.dim() == 5 and x.shape[2] == bn.num_features and x.stride(0) == x[0].numel()
                and x[0].is_contiguous(memory_format=torch.channels_last))
    return False


def _batch_stats(bn: nn.Module) -> bool:
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def _hooked(*modules: nn.Module) -> bool:
    """Any forward/backward hook on the modules (or global ones): the fused kernel would bypass their calls, and
    hooks are how firing rates, energy reports and tools observe a layer."""
    if (M._global_forward_hooks or M._global_forward_pre_hooks or M._global_backward_hooks
            or getattr(M, "_global_backward_pre_hooks", None)):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules)


def _static_ok(bn: nn.Module, neuron: nn.Module) -> bool:
    """The conditions of :func:`can_fuse` that do not depend on the input."""
    return (not _hooked(bn, neuron) and type(neuron) in (LIF, IF) and type(neuron.surrogate) in (Sigmoid, ATan)
            and bn.affine and type(bn) in (TokenBN, nn.BatchNorm2d))


def fusable(bn: nn.Module, neuron: nn.Module) -> bool:
    """Whether the compiled BatchNorm+neuron kernel can run this pair for some input (:func:`can_fuse` adds the
    input's conditions): LIF/IF with a fixed decay, a sigmoid or atan surrogate, an affine BatchNorm, no hooks."""
    return _static_ok(bn, neuron)


def can_fuse(bn: nn.Module, neuron: nn.Module, x: torch.Tensor) -> bool:
    """Whether the compiled BatchNorm+neuron kernel can run ``neuron(bn(x))`` (never when either module has hooks:
    they are called as usual)."""
    if not _static_ok(bn, neuron):
        return False
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.numel() > 0
            and _channel_innermost(bn, x)):
        return False
    if _kernels.select_kernel(x) is not _kernels.default_kernel:  # a registered kernel for this device wins
        return False
    if _batch_stats(bn):
        if x.numel() // bn.num_features <= 1:  # let nn.BatchNorm raise its error
            return False
    elif torch.is_grad_enabled() and (x.requires_grad or bn.weight.requires_grad or bn.bias.requires_grad):
        return False  # eval-mode statistics with gradients: the unfused modules
    return _native.library() is not None  # None when off (SPIKEFORMER_NATIVE=0) or not buildable


def _unfused(bn: nn.Module, neuron: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # frames: BatchNorm2d (or what replaced it: SyncBatchNorm, the DDP global-batch BN) over the merged T*B batch
    y = seq_apply(bn, x) if x.dim() == 5 and not isinstance(bn, TokenBN) else bn(x)
    return neuron(y)


def _want_fuse(bn: nn.Module, x: torch.Tensor, fuse: Optional[bool]) -> bool:
    if fuse is None:
        return bool(getattr(bn, "fast", False)) or x.dtype != torch.float32
    return fuse


def bn_neuron(bn: nn.Module, neuron: nn.Module, x: torch.Tensor, fuse: Optional[bool] = None,
              spikes_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``neuron(bn(x))`` for tokens ``[T, ..., C]`` (``TokenBN``) or frames ``[T, B, C, H, W]`` (``BatchNorm2d``,
    channels-last frames for the fused kernel). ``fuse=None`` fuses when ``bn.fast`` is set
    (:func:`spikeformer.layers.use_fast_kernels`) or ``x`` is not fp32 (autocast); ``fuse=False`` never does.
    ``spikes_dtype=torch.bfloat16``: the fused training kernel may return the spikes of an fp32 ``x`` in bf16 (exact;
    for a bf16 consumer, which then needs no cast); other paths return ``x``'s dtype."""
    gpu = kernels.registered(kernels.BN_NEURON, x)  # a device's own kernel (Triton on CUDA) wins where it applies
    if gpu is not None and fuse is not False and _static_ok(bn, neuron) and _channel_innermost(bn, x):
        s, mean, var = gpu(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, _batch_stats(bn),
                           neuron.spec(), neuron.surrogate)
        if _batch_stats(bn):
            _update_running_stats(bn, mean, var, x.numel() // bn.num_features)
        return s
    want = _want_fuse(bn, x, fuse)
    if want and _shared_over_time(bn, x) and not _hooked(neuron):
        if not _static_ok(bn, neuron):
            return neuron(_bn_shared_over_time(bn, x))
        # the fused kernel beats a BatchNorm of the one batch and the neuron apart (Spikformer's stem measured
        # 0.93-1.02x that way): it runs on the frames written out (their statistics are the one batch's)
        x = materialize(x)
    if not (want and can_fuse(bn, neuron, x)):
        return _unfused(bn, neuron, x)
    return _fused(bn, neuron, x, spikes_dtype=spikes_dtype)


def _shared_over_time(bn: nn.Module, x: torch.Tensor) -> bool:
    return (type(bn) is nn.BatchNorm2d and x.dim() == 5 and time_invariant(x) and not _hooked(bn)
            and x.shape[1] * x.shape[3] * x.shape[4] > 1)


def _bn_shared_over_time(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``BatchNorm2d`` over frames ``[T, B, C, H, W]`` that repeat one batch over T (:func:`time_invariant`): run on
    ``x[0]`` and expanded. T copies have the mean and biased variance of one, so the output is the merged-batch
    BatchNorm's; the running variance takes the unbiased correction of the T*B merged frames, as ``nn.BatchNorm2d``
    on them would."""
    x0 = shared_step(x)
    if not _batch_stats(bn):
        y = bn(x0)
    else:
        y, mean, invstd = torch.native_batch_norm(x0, bn.weight, bn.bias, None, None, True, 0.0, bn.eps)
        var = invstd.detach().double().pow(-2) - bn.eps  # the biased batch variance
        _update_running_stats(bn, mean.detach(), var, x.numel() // bn.num_features)
    return _grad_in_layout(y).unsqueeze(0).expand(x.shape)


class _GradInLayout(torch.autograd.Function):
    """The identity, whose backward hands on the gradient in the memory format of the forward's frames
    ``[N, C, H, W]`` (a copy where it arrives in the other one)."""

    @staticmethod
    def forward(ctx, y):
        ctx.channels_last = not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


def _bn_in_layout(bn: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``bn(z)`` for frames ``z`` ``[N, C, H, W]``, its backward given the output gradient in ``z``'s memory format.
    PyTorch's BatchNorm backward takes a slow path when the two differ (the gradient of a channels-last output
    arriving NCHW from a residual sum, or the reverse): ``[128, 512, 8, 8]`` in bf16 took 26 ms instead of 3.1 ms
    forward and backward, an SDT training step spent 0.1 s there."""
    return _grad_in_layout(bn(z))


def _grad_in_layout(y: torch.Tensor) -> torch.Tensor:
    if y.requires_grad and y.dim() == 4 and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _GradInLayout.apply(y)
    return y


def bn_frames(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn`` over frames ``[T, B, C, H, W]`` (the merged T*B batch) on the fast path: once per batch where the
    frames repeat one batch over time."""
    if _shared_over_time(bn, x):
        return _bn_shared_over_time(bn, x)
    T, B = x.shape[:2]
    return _bn_in_layout(bn, x.flatten(0, 1)).unflatten(0, (T, B))


def _update_running_stats(bn: nn.Module, mean: torch.Tensor, var: torch.Tensor, n: int,
                          shift: Optional[torch.Tensor] = None) -> None:
    """BatchNorm's running-statistics update from a fused kernel's batch mean (plus ``shift`` where given) and
    biased variance over ``n`` values per channel (``momentum=None``: the cumulative average, as
    ``nn.BatchNorm``). One compiled call where it applies, else tensor operations (the same arithmetic)."""
    if not (bn.training and bn.track_running_stats):
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
        if not torch.compiler.is_compiling() and _native.running_update(bn.running_mean, bn.running_var, mean, var,
                                                                       shift, f, n / (n - 1)):
            return
        if shift is not None:
            mean = mean + shift
        bn.running_mean.mul_(1.0 - f).add_(mean.to(bn.running_mean.dtype), alpha=f)
        bn.running_var.mul_(1.0 - f).add_((var * (n / (n - 1))).to(bn.running_var.dtype), alpha=f)


def _fused(bn: nn.Module, neuron: nn.Module, x: torch.Tensor, bias_left_out: Optional[torch.Tensor] = None,
           spikes_dtype: Optional[torch.dtype] = None):
    C = bn.num_features
    spec, sur = neuron.spec(), neuron.surrogate
    if not _batch_stats(bn):
        a, b = _native.bn_scale_shift(bn.weight, bn.bias, bn.running_mean.double(),
                                      (bn.running_var.double() + bn.eps).rsqrt())
        return _native.bn_inference(x, C, a, b, spec, sur)
    s, mean, var = _native.NativeBNNeuron.apply(x, bn.weight, bn.bias, bias_left_out, C, bn.eps, spec, sur,
                                                spikes_dtype)
    # the statistics of the input with the bias left out, as the unfused layers see it
    shift = None if bias_left_out is None else bias_left_out.detach().to(x.dtype).double()
    _update_running_stats(bn, mean.detach(), var.detach(), x.numel() // C, shift)
    return s


def linear_bn_neuron(linear: nn.Linear, bn: nn.Module, neuron: nn.Module, x: torch.Tensor,
                     fuse: Optional[bool] = None, sparse: bool = False) -> torch.Tensor:
    """``neuron(bn(linear(x)))`` on tokens. Where the BatchNorm+neuron pair fuses with batch statistics (training),
    the Linear's bias is not added: BatchNorm subtracts the batch mean, which contains the bias, so the pre-activation
    is the same without it (and the bias's exact gradient is zero), and a GEMM without a bias is faster (bf16,
    ``[8192, 384] x [384, 1536]``: 15.6 -> 11.7 ms). The running mean still receives the bias, so the eval-mode model
    is unchanged, and the bias gets its zero gradient, so optimizers and DDP see every parameter as usual.

    ``sparse=True`` says ``x`` is spikes (the output of a neuron): on the fused path the Linear then runs over the
    nonzero inputs (:func:`spikeformer.layers.sparse.spike_linear`) when few enough of them are nonzero."""
    if fuse is None:  # as bn_neuron decides on the Linear's output (bf16 under autocast)
        fuse = _want_fuse(bn, x, None) or torch.is_autocast_enabled(x.device.type)
    plain = type(linear) in (nn.Linear, OneDNNLinear, TokenLinear) and not _hooked(linear)
    if not (fuse and linear.bias is not None and plain and _batch_stats(bn) and x.device.type == "cpu"
            and _static_ok(bn, neuron)):
        z = spike_linear(linear, x) if (sparse and fuse and plain) else None
        return bn_neuron(bn, neuron, linear(x) if z is None else z, fuse)
    z = spike_linear(linear, x, with_bias=False) if sparse else None
    if z is None:
        fused = linear_bn_neurons([(linear, bn, neuron)], x)
        if fused is not None:
            return fused[0]
        if type(linear) is OneDNNLinear or (type(linear) is TokenLinear and linear.fast):
            z = _kernels_linear.token_linear(linear, x, with_bias=False)
        else:
            z = F.linear(x, linear.weight)
    if can_fuse(bn, neuron, z):
        return _fused(bn, neuron, z, linear.bias)
    return _unfused(bn, neuron, z + linear.bias.to(z.dtype))  # e.g. fp16 tokens: the bias added after all


def _branch_ok(linear: nn.Module, bn: nn.Module, neuron: nn.Module) -> bool:
    return (type(linear) in (nn.Linear, OneDNNLinear, TokenLinear) and not _hooked(linear) and type(bn) is TokenBN
            and _batch_stats(bn) and _static_ok(bn, neuron))


def linear_bn_neurons(branches, x: torch.Tensor, keep_input: bool = False) -> Optional[list]:
    """``[neuron(bn(linear(x))) for (linear, bn, neuron) in branches]`` on tokens ``x [..., K]`` as one autograd
    Function (:mod:`spikeformer.kernels.cpu.linear_bn`): the dense bf16 products under bf16 autocast on a CPU with
    native bf16 GEMMs, training-mode BatchNorms fused with their neurons, the Linear biases left out (as
    :func:`linear_bn_neuron`). With ``keep_input`` the list ends with ``x`` itself, to which the caller adds its
    residual branch: the residual's gradient then joins the branches' input gradients inside their GEMMs. ``None``
    where that does not apply (other devices, dtypes or precisions, no gradients, eval-mode statistics, hooks,
    other module types, ``torch.compile`` tracing); the caller then runs the branches one by one."""
    if not (torch.is_grad_enabled() and _bf16.native_autocast(x) and not torch.compiler.is_compiling()
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and _kernels.select_kernel(x) is _kernels.default_kernel
            and all(_branch_ok(*b) for b in branches)
            and _linear_bn.supports(x, [linear.weight for linear, _, _ in branches])):
        return None
    specs = [(neuron.spec(), neuron.surrogate, bn.eps) for _, bn, neuron in branches]
    tensors = [t for linear, bn, _ in branches for t in (linear.weight, linear.bias, bn.weight, bn.bias)]
    out = _linear_bn.apply(x, specs, tensors, keep_input)
    n, rows = len(branches), x.numel() // x.shape[-1]
    for i, (linear, bn, _) in enumerate(branches):
        # the statistics of the input with the bias left out, as the unfused layers see it (_fused)
        shift = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16).double()
        _update_running_stats(bn, out[n + 2 * i], out[n + 2 * i + 1], rows, shift)
    return list(out[:n]) + ([out[-1]] if keep_input else [])
