"""BatchNorm + neuron in Triton, for ``x`` ``[T, ..., C]`` with the channel innermost in memory.

Training: one Triton pass sums every channel (float64, about the channel's first value so the variance does not
cancel) into the batch mean and biased variance; the neuron kernel (``neuron.py``) then reads ``x`` and normalises
it on the fly as ``x * a[c] + b[c]`` (rounded to ``x``'s dtype, as a stored BatchNorm output is), so the normalised
input is never written. Backward recomputes the membrane the same way, runs the BPTT kernel into ``dL/dy`` and
turns it into ``dL/dx``, ``dL/dweight``, ``dL/dbias`` with BatchNorm's two per-channel sums (PyTorch reductions).
Eval: the running statistics become the per-channel ``a``, ``b``; nothing is saved.

The statistics are summed in another order than PyTorch's BatchNorm, so a pre-activation may differ from the
unfused reference (``kernels/torch/bn_neuron.py``) by an ulp and flip a spike sitting on the threshold; the tests
hold this kernel to the same bound as the compiled CPU one. Calls it cannot run (a PLIF, another surrogate, dtype,
device or layout; eval-mode statistics with gradients) go to the unfused reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..params import NeuronParams, surrogate_kind
from ..torch import bn_neuron as torch_bn_neuron
from .common import FLOAT_DTYPES, NUM_WARPS, SURROGATES, runs_on
from .neuron import Cfg, launch_backward, launch_forward, make_cfg

STAT_ROWS = 64      # rows per tile of the statistics kernel
STAT_COLS = 32      # channels per program
STAT_SPLIT = 4096   # rows per program along the batch (more programs for large batches)


@triton.jit
def _channel_sums(x_ptr, part_ptr, R, C, rows_per_prog,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    shift = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
    s1 = tl.zeros([BLOCK_C], tl.float64)
    s2 = tl.zeros([BLOCK_C], tl.float64)
    r0 = pid_r * rows_per_prog
    for r in range(0, rows_per_prog, BLOCK_R):
        local = r + tl.arange(0, BLOCK_R)
        rows = r0 + local
        rmask = (rows < R) & (local < rows_per_prog)
        m2 = rmask[:, None] & cmask[None, :]
        ptrs = x_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :]
        d = tl.load(ptrs, mask=m2, other=0.0).to(tl.float64) - shift[None, :]
        d = tl.where(m2, d, 0.0)
        s1 += tl.sum(d, axis=0)
        s2 += tl.sum(d * d, axis=0)
    base = part_ptr + pid_r * 2 * C
    tl.store(base + cols, s1, mask=cmask)
    tl.store(base + C + cols, s2, mask=cmask)


def channel_stats(x: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance (float64) of ``x`` whose memory is ``[R, C]``."""
    R = x.numel() // C
    splits = triton.cdiv(R, STAT_SPLIT)
    part = torch.empty(splits, 2, C, dtype=torch.float64, device=x.device)
    _channel_sums[(triton.cdiv(C, STAT_COLS), splits)](
        x, part, R, C, STAT_SPLIT, BLOCK_R=STAT_ROWS, BLOCK_C=STAT_COLS, num_warps=NUM_WARPS)
    s1, s2 = part.sum(0)
    shift = x.reshape(R, C)[0].double()
    d = s1 / R
    return shift + d, (s2 / R - d * d).clamp_(min=0.0)


def scale_shift(weight, bias, mean64, invstd64) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm as ``y = x * a + b`` per channel (computed in float64, returned fp32)."""
    w = weight.detach().double()
    a = w * invstd64
    return a.float(), (bias.detach().double() - mean64 * a).float()


# ------------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("spikeformer::triton_bn_neuron", mutates_args=())
def bn_neuron_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bias_left_out: Optional[torch.Tensor],
                 eps: float, v_threshold: float, v_reset: float, v_init: float, hard: bool, detach_reset: bool,
                 decay_input: bool, leaky: bool, tau: float, surrogate: int,
                 alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training mode: ``(spikes, batch mean, batch biased variance)`` (float64 statistics). ``bias_left_out``: a
    bias the producer of ``x`` did not add; the batch mean absorbs it, so it only receives a zero gradient."""
    cfg = Cfg(v_threshold, v_reset, v_init, hard, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    C = weight.shape[0]
    mean, var = channel_stats(x, C)
    a, b = scale_shift(weight, bias, mean, (var + eps).rsqrt())
    s, _, _ = launch_forward(x, None, None, cfg, a, b, C, want_v=False)
    return s, mean, var


@bn_neuron_op.register_fake
def _bn_neuron_fake(x, weight, bias, bias_left_out, eps, *cfg):
    C = weight.shape[0]
    return (torch.empty_like(x), x.new_empty(C, dtype=torch.float64), x.new_empty(C, dtype=torch.float64))


@torch.library.custom_op("spikeformer::triton_bn_neuron_backward", mutates_args=())
def bn_neuron_backward_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                          var: torch.Tensor, grad_spikes: torch.Tensor, eps: float, v_threshold: float,
                          v_reset: float, v_init: float, hard: bool, detach_reset: bool, decay_input: bool,
                          leaky: bool, tau: float, surrogate: int,
                          alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/dx, dL/dweight, dL/dbias)`` of :func:`bn_neuron_op`."""
    cfg = Cfg(v_threshold, v_reset, v_init, hard, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    C = weight.shape[0]
    R = x.numel() // C
    invstd = (var + eps).rsqrt()
    a, b = scale_shift(weight, bias, mean, invstd)
    _, _, h = launch_forward(x, None, None, cfg, a, b, C, want_s=False, want_v=False, want_h=True)
    gy, _, _ = launch_backward(h, None, None, grad_spikes.to(x.dtype).reshape(x.shape).contiguous(), None, cfg,
                               torch.float32, False, False)
    del h
    g2, x2 = gy.view(R, C), x.reshape(R, C)
    m32 = mean.float()
    sum_g = g2.sum(0, dtype=torch.float64)
    sum_gxc = (g2 * (x2.float() - m32)).sum(0, dtype=torch.float64)  # sum dL/dy * (x - mean)
    w = weight.detach().double()
    grad_w = sum_gxc * invstd  # sum dL/dy * xhat
    # dL/dx = w invstd (g - mean(g) - xhat mean(g xhat)) = g A + x B + D, per channel A, B, D
    A = w * invstd
    B = -A * invstd * grad_w / R
    D = -A * sum_g / R - B * mean
    gx = torch.addcmul(torch.addcmul(D.float(), g2, A.float()), x2.float(), B.float()).to(x.dtype).view(x.shape)
    return gx, grad_w.to(weight.dtype), sum_g.to(bias.dtype)


@bn_neuron_backward_op.register_fake
def _bn_neuron_backward_fake(x, weight, bias, mean, var, grad_spikes, eps, *cfg):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, weight, bias, bias_left_out, eps, *cfg = inputs
    _, mean, var = output
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps, ctx.cfg = eps, Cfg(*cfg)
    ctx.left_out = None if bias_left_out is None else (bias_left_out.shape, bias_left_out.dtype)


def _backward(ctx, grad_spikes, _grad_mean, _grad_var):
    x, weight, bias, mean, var = ctx.saved_tensors
    if grad_spikes is None:
        grad_spikes = torch.zeros_like(x)
    gx, gw, gb = bn_neuron_backward_op(x, weight, bias, mean, var, grad_spikes, ctx.eps, *ctx.cfg)
    g_left = None
    if ctx.left_out is not None and ctx.needs_input_grad[3]:
        g_left = torch.zeros(ctx.left_out[0], dtype=ctx.left_out[1], device=x.device)
    return (gx, gw if ctx.needs_input_grad[1] else None, gb if ctx.needs_input_grad[2] else None, g_left,
            None) + (None,) * len(Cfg._fields)


bn_neuron_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("spikeformer::triton_bn_neuron_eval", mutates_args=())
def bn_neuron_eval_op(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, v_threshold: float, v_reset: float,
                      v_init: float, hard: bool, detach_reset: bool, decay_input: bool, leaky: bool, tau: float,
                      surrogate: int, alpha: float) -> torch.Tensor:
    """Spikes of the neuron driven by ``x * a[c] + b[c]`` (BatchNorm with fixed statistics); no gradient."""
    cfg = Cfg(v_threshold, v_reset, v_init, hard, detach_reset, decay_input, leaky, tau, surrogate, alpha)
    s, _, _ = launch_forward(x, None, None, cfg, a, b, a.shape[0], want_v=False)
    return s


@bn_neuron_eval_op.register_fake
def _bn_neuron_eval_fake(x, a, b, *cfg):
    return torch.empty_like(x)


# ------------------------------------------------------------------------------------------------- entry point
def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def supports(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, training: bool, spec, surrogate,
             bias_left_out=None) -> bool:
    """Whether the Triton kernels can run this call (else the unfused reference runs it)."""
    C = weight.shape[0]
    return (
        runs_on(x.device)
        and x.dtype in FLOAT_DTYPES
        and x.numel() > 0
        and surrogate_kind(surrogate) in SURROGATES
        and not (spec.leaky and spec.tau is None)  # a PLIF: the reference says why not
        and x.dim() >= 2 and x.shape[-1] == C and x.is_contiguous()
        and weight is not None and bias is not None
        and (x.numel() // C > 1 if training else not _needs_grad(x, weight, bias, bias_left_out))
    )


def bn_neuron(x, weight, bias, running_mean, running_var, eps: float, training: bool, spec, surrogate,
              bias_left_out: Optional[torch.Tensor] = None):
    """The BatchNorm + neuron operation (signature of ``kernels.torch.bn_neuron.bn_neuron``): the Triton kernels
    where they can run the call, the unfused reference otherwise."""
    if not supports(x, weight, bias, training, spec, surrogate, bias_left_out):
        return torch_bn_neuron.bn_neuron(x, weight, bias, running_mean, running_var, eps, training, spec, surrogate,
                                         bias_left_out)
    cfg = make_cfg(NeuronParams.from_spec(spec, surrogate), x.dtype)
    if training:
        return bn_neuron_op(x, weight, bias, bias_left_out, float(eps), *cfg)
    invstd = (running_var.double() + eps).rsqrt()
    a, b = scale_shift(weight, bias, running_mean.double(), invstd)
    if bias_left_out is not None:  # BatchNorm of x + bias: the same scale, the bias moved into the shift
        b = (b.double() + bias_left_out.detach().to(x.dtype).double() * a.double()).float()
    return bn_neuron_eval_op(x, a, b, *cfg), None, None
