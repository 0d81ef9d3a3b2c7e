"""bf16 autocast where bf16 products are emulated (kernels/cpu/bf16.py): fp32 kernels on the bf16 values, autocast's
roundings kept, and no bf16 product left in a training step of any family."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import spikeformer
from spikeformer.kernels.cpu import bf16
from spikeformer.kernels.cpu import linear as cpu_linear
from spikeformer.layers import blocks
from spikeformer.layers.attention import spike_attention, token_spike_attention
from spikeformer.models import get_model_info

_PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "convolution", "convolution_backward", "_convolution",
             "mkldnn_convolution", "_slow_conv2d_forward", "_slow_conv2d_backward", "_mkldnn_linear", "mkldnn_linear",
             "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward"}


class Bf16Products(TorchDispatchMode):
    """The matrix products and convolutions dispatched with a bf16 tensor among their arguments."""

    def __init__(self):
        super().__init__()
        self.hits = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _PRODUCTS:
            leaves = torch.utils._pytree.tree_leaves((args, kwargs))
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in leaves):
                self.hits.append(name)
        return func(*args, **(kwargs or {}))


def _ints(shape, lo, hi, seed):
    return torch.randint(lo, hi, shape, generator=torch.Generator().manual_seed(seed)).float()


def test_emulation_follows_the_cpu_unless_forced():
    assert bf16.emulated() == (not bf16.native())
    x = torch.ones(2, 2)
    with bf16.emulation(True):
        assert bf16.emulated() and not bf16.active(x)  # no autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert bf16.active(x) and bf16.fp32_products(x)
        with torch.autocast("cpu", dtype=torch.float16):
            assert not bf16.active(x) and not bf16.fp32_products(x)
    with bf16.emulation(False), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not bf16.active(x) and not bf16.fp32_products(x)
    assert bf16.fp32_products(x) and not bf16.fp32_products(x.bfloat16())


def test_mm_equals_the_bf16_product():
    """Sums below 256 are exact in both: the emulated product equals PyTorch's bf16 one bit for bit; larger sums are
    the fp32 sum rounded once."""
    a, b = _ints((64, 128), -1, 2, 0).bfloat16(), _ints((128, 32), -1, 2, 1).bfloat16()
    with bf16.emulation(True):
        got = bf16.mm(a, b)
    assert got.dtype == torch.bfloat16 and torch.equal(got, a.mm(b))
    a, b = _ints((64, 128), -4, 5, 2).bfloat16(), _ints((128, 32), -4, 5, 3).bfloat16()
    with bf16.emulation(True):
        got = bf16.mm(a, b)
    exact = a.float().mm(b.float())
    assert exact.abs().max() > 256 and torch.equal(got, exact.bfloat16())


def test_linear_keeps_autocasts_roundings():
    """The token Linear under emulated bf16 autocast: the output is the fp32 product of the bf16-rounded input,
    weight and bias, rounded to bf16; the input gradient is rounded to bf16, the weight and bias gradients to bf16
    and back to fp32, as through autocast's casts."""
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    x = torch.randn(3, 50, 96, requires_grad=True)
    g = torch.randn(3, 50, 40)
    with bf16.emulation(True), Bf16Products() as log:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = cpu_linear.token_linear(lin, x)
        (y.float() * g).sum().backward()
    assert log.hits == [] and y.dtype == torch.bfloat16
    xr, wr, br = (t.detach().bfloat16().float().requires_grad_() for t in (x, lin.weight, lin.bias))
    ref = F.linear(xr, wr, br)
    (ref * g.bfloat16().float()).sum().backward()
    assert torch.equal(y, ref.detach().bfloat16())
    assert torch.equal(x.grad, xr.grad.bfloat16().float())
    assert torch.equal(lin.weight.grad, wr.grad.bfloat16().float())
    assert torch.equal(lin.bias.grad, br.grad.bfloat16().float())


@pytest.mark.parametrize("spikes", [False, True], ids=["dense", "spikes"])
def test_conv_frames_runs_fp32_kernels(spikes):
    """A block's 3x3 convolution of frames (Winograd for the dense input at 64 channels, the lookups for spikes)
    under emulated bf16 autocast: no bf16 product, and the fp32 convolution of the bf16 values within bf16
    rounding, gradients included."""
    torch.manual_seed(1)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = (torch.rand(2, 4, 64, 16, 16) < 0.3).float() if spikes else torch.randn(2, 4, 64, 16, 16)
    x = blocks.channels_last(x).requires_grad_()
    c16 = copy.deepcopy(conv)
    with bf16.emulation(True), Bf16Products() as log:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = blocks.conv_frames(c16, x, fast=True, spikes_in=spikes)
        y.float().square().sum().backward()
    assert log.hits == [] and y.dtype == torch.bfloat16 and y.shape == (2, 4, 64, 16, 16)
    # a backward pass inside the autocast region (advised against, but it happens) gives the same gradients: the
    # compiled kernels' backward runs with autocast off
    c_in, x_in = copy.deepcopy(conv), x.detach().clone().requires_grad_()
    with bf16.emulation(True), torch.autocast("cpu", dtype=torch.bfloat16):
        blocks.conv_frames(c_in, x_in, fast=True, spikes_in=spikes).float().square().sum().backward()
    assert torch.equal(x_in.grad, x.grad) and torch.equal(c_in.weight.grad, c16.weight.grad)
    xr = x.detach().bfloat16().float().requires_grad_()
    wr = conv.weight.detach().bfloat16().float().requires_grad_()
    ref = F.conv2d(xr.flatten(0, 1), wr, padding=1)
    ref.bfloat16().float().square().sum().backward()
    torch.testing.assert_close(y.float().flatten(0, 1), ref.detach(), rtol=2 ** -7, atol=1e-3)
    torch.testing.assert_close(c16.weight.grad, wr.grad, rtol=2 ** -6, atol=1e-2 * wr.grad.abs().max().item())
    torch.testing.assert_close(x.grad, xr.grad, rtol=2 ** -6, atol=1e-2 * xr.grad.abs().max().item())


def test_attention_products_in_fp32():
    """Spike attention with heads the compiled kernel does not serve: fp32 products of the 0/1 spikes (the fp32
    path's values bit for bit), no bf16 batched product."""
    q, k, v = ((torch.rand(2, 3, 20, 12, generator=torch.Generator().manual_seed(s)) < 0.5).float()
               for s in (1, 2, 3))
    ref = spike_attention(q, k, v, 0.3)
    with bf16.emulation(True), torch.autocast("cpu", dtype=torch.bfloat16), Bf16Products() as log:
        got = spike_attention(q, k, v, 0.3)
        tok = token_spike_attention(q.flatten(-2), k.flatten(-2), v.flatten(-2), 3, 0.3)
    assert log.hits == [] and got.dtype == torch.float32 and torch.equal(got, ref)
    assert tok.shape == (2, 3, 240)


def test_forward_respects_hooks_and_parameters():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    r = bf16.rounded_module(conv)
    assert type(r) is nn.Conv2d and list(r.parameters()) == [] and len(list(conv.parameters())) == 2
    assert torch.equal(r.weight, conv.weight.bfloat16().float()) and r.weight.grad_fn is not None
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with bf16.emulation(True), torch.autocast("cpu", dtype=torch.bfloat16):
        y = blocks.module_forward(conv, torch.randn(1, 4, 5, 5))
    assert seen == [torch.bfloat16] and y.dtype == torch.bfloat16  # a hooked module runs itself (autocast's op)


# One small configuration per family (and the reconstruction model): a training step under emulated bf16 autocast
# dispatches no bf16 matrix product or convolution.
_MODELS = ["spikformer_digits_1_64", "spikingformer_cifar_2_384", "sdt_cifar_2_256", "qkformer_digits",
           "sdt_v2_digits", "spikeformer_dvs_digits", "spikingresformer_ti", "masnn_dvs_gesture", "mst_digits",
           "spiking_convnet_digits", "spikeformer_recon_digits"]


@pytest.mark.parametrize("name", _MODELS)
def test_no_bf16_product_in_a_training_step(name):
    torch.manual_seed(0)
    m = spikeformer.create_model(name, T=2).train()
    c, h, _ = get_model_info(name).input_size
    side = min(h, 32)
    if name.startswith("spikeformer_recon"):
        x = (torch.rand(2, m.T, 16, 16) < 0.3).float()
    elif c == 2:
        x = torch.randint(0, 3, (2, 2, c, side, side)).float()
    else:
        x = torch.rand(2, c, side, side)
    with bf16.emulation(True), Bf16Products() as log:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        out.float().square().mean().backward()
    assert log.hits == []
    grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


def test_emulated_training_matches_bf16_products():
    """The same step with PyTorch's bf16 products and with the emulated ones: the loss agrees to bf16 rounding (a
    few spikes may flip where a sum is rounded differently)."""
    torch.manual_seed(0)
    base = spikeformer.create_model("spikformer_digits_1_64").train()
    x = torch.rand(4, 1, 16, 16)
    y = torch.randint(0, 10, (4,))
    losses = []
    for on in (True, False):
        m = copy.deepcopy(base)
        with bf16.emulation(on), torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(F.cross_entropy(m(x).float(), y).item())
    assert abs(losses[0] - losses[1]) <= 0.02 * abs(losses[1])
