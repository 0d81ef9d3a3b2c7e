"""A static image repeated over T (expand_time's stride-0 view): the fast path's per-frame convolutions, BatchNorm
and max-pools run once per batch and are expanded over time (layers/time.py, blocks.py, fused_bn.py)."""

import copy

import pytest
import torch
from torch import nn

from spikeformer.layers.blocks import channels_last, conv_bn, conv_bn_neuron
from spikeformer.layers.fused_bn import bn_frames
from spikeformer.layers.time import expand_time, frame_map, shared_step, time_invariant
from spikeformer.neurons import neuron_factory

T, B = 4, 3


def _image(C=3, H=12, W=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g)


def test_time_invariant_and_shared_step():
    img = _image()
    x = expand_time(img, T)
    assert time_invariant(x) and not time_invariant(x.contiguous()) and not time_invariant(x[:1])
    assert shared_step(x) is img  # the view's base: its gradient is not a zero-filled [T, ...] tensor
    y = x.transpose(-1, -2)  # a view of another layout: the first step, by indexing
    assert torch.equal(shared_step(y), y[0])
    cl = channels_last(x)
    assert time_invariant(cl) and cl[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, x)


def test_frame_map_runs_once_and_expands():
    x = expand_time(_image(), T)
    calls = []

    def fn(t):
        calls.append(t.shape[0])
        return torch.nn.functional.max_pool2d(t, 3, 2, 1)

    out = frame_map(fn, x)
    assert calls == [B] and out.shape == (T, B, 3, 6, 6) and out.stride(0) == 0
    assert torch.equal(out, frame_map(fn, x.contiguous()))  # the merged T*B frames: the same values
    assert calls == [B, T * B]


def _pair(C_in=3, C=8, seed=0):
    torch.manual_seed(seed)
    conv, bn = nn.Conv2d(C_in, C, 3, 1, 1, bias=False), nn.BatchNorm2d(C)
    return conv, bn


def test_bn_over_time_invariant_frames_equals_the_merged_batch():
    """Output, gradients and running statistics (the unbiased variance counts all T*B frames) as nn.BatchNorm2d
    on the merged batch."""
    img = _image(C=8)
    bn = nn.BatchNorm2d(8, momentum=0.3)
    ref = copy.deepcopy(bn)
    xs = img.clone().requires_grad_()
    xr = img.clone().requires_grad_()
    y = bn_frames(bn, expand_time(xs, T))
    assert y.stride(0) == 0
    yr = ref(expand_time(xr, T).reshape(T * B, 8, 12, 12)).view(T, B, 8, 12, 12)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    g = torch.randn(T, B, 8, 12, 12, generator=torch.Generator().manual_seed(1))
    (y * g).sum().backward()
    (yr * g).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    # n = T*B*H*W = 1728 values per channel against 432 for one batch: the corrections differ by 0.17 %
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)
    assert int(bn.num_batches_tracked) == 1
    # momentum None (cumulative average) and eval mode
    bn.momentum = ref.momentum = None
    bn_frames(bn, expand_time(img, T))
    ref(expand_time(img, T).reshape(T * B, 8, 12, 12))
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
    bn.eval(), ref.eval()
    torch.testing.assert_close(bn_frames(bn, expand_time(img, T)),
                               ref(expand_time(img, T).reshape(T * B, 8, 12, 12)).view(T, B, 8, 12, 12))


@pytest.mark.parametrize("with_neuron", [True, False])
def test_conv_blocks_on_a_static_image_match_the_materialized_frames(with_neuron):
    conv, bn = _pair()
    lif = neuron_factory("lif", tau=2.0, detach_reset=True)()
    conv2, bn2 = copy.deepcopy(conv), copy.deepcopy(bn)
    img = _image() * 2
    x_inv = expand_time(img, T)
    x_mat = x_inv.contiguous()
    if with_neuron:
        out = conv_bn_neuron(conv, bn, lif, x_inv, fast=True)
        ref = conv_bn_neuron(conv2, bn2, lif, x_mat, fast=True)
        assert 0 < ref.mean() < 1
        # the statistics are summed in another order: a spike at the threshold may flip
        assert (out != ref).float().mean() < 0.01
    else:
        out = conv_bn(conv, bn, x_inv, fast=True)
        ref = conv_bn(conv2, bn2, x_mat, fast=True)
        assert out.stride(0) == 0  # stays one batch, expanded
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(conv.weight.grad, conv2.weight.grad, rtol=2e-3, atol=2e-3 * conv2.weight.grad.abs().max().item())
    torch.testing.assert_close(bn.running_var, bn2.running_var, rtol=1e-5, atol=1e-6)


def test_fusable_bn_neuron_runs_fused_on_the_written_out_frames(monkeypatch):
    """Conv -> BN -> LIF on a static image: the convolution once per batch, then the fused BatchNorm + neuron kernel
    on the T*B frames written out (layers/fused_bn.py), as on frames that differ over time."""
    from spikeformer.layers import fused_bn as BNN

    conv, bn = _pair()
    lif = neuron_factory("lif", tau=2.0, detach_reset=True)()
    fused, convs = [], []
    real = BNN._native.NativeBNNeuron.apply
    monkeypatch.setattr(BNN._native.NativeBNNeuron, "apply", lambda x, *a: fused.append(x.shape) or real(x, *a))
    real_conv = conv.forward
    monkeypatch.setattr(conv, "forward", lambda t: convs.append(t.shape[0]) or real_conv(t))
    # 40x40: above the size under which a block on NCHW frames runs the exact operations (blocks.small_nchw_block)
    out = conv_bn_neuron(conv, bn, lif, expand_time(_image(H=40, W=40) * 2, T), fast=True)
    assert convs == [B] and fused == [(T, B, 8, 40, 40)] and out.shape == (T, B, 8, 40, 40)
    assert out.stride(0) == out[0].numel()


def test_hooks_see_every_frame():
    """A forward hook (firing rates, the energy report) sees the T*B frames as before."""
    conv, bn = _pair()
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    conv_bn(conv, bn, expand_time(_image(), T), fast=True)
    assert seen == [T * B]


def test_qkformer_static_image_trains_as_the_materialized_frames(monkeypatch):
    """QKFormer's first patch embedding (conv -> BN -> max-pool -> LIF) on a static image: loss and gradients of a
    fast training step as on the same frames materialized."""
    from spikeformer.models import qkformer

    torch.manual_seed(0)
    m1 = qkformer.QKFormer("imagenet", num_classes=10, embed_dim=64, depth=4, num_heads=2, T=2)
    m2 = copy.deepcopy(m1)
    pooled = []
    real = qkformer.max_pool
    monkeypatch.setattr(qkformer, "max_pool", lambda pool, t: pooled.append(t.shape[0]) or real(pool, t))
    img = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = torch.arange(4) % 10
    l1 = nn.functional.cross_entropy(m1(img), y)
    l2 = nn.functional.cross_entropy(m2(img.unsqueeze(0).expand(2, *img.shape).contiguous()), y)
    # the image's pool once per batch (B = 4), the pools of spikes over T*B frames; then the materialized frames
    assert pooled == [4, 8, 8, 8] + [8, 8, 8, 8]
    l1.backward(), l2.backward()
    torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-4)
    for (n, p), q in zip(m1.named_parameters(), m2.parameters()):
        if "patch_embed1.proj_" in n and p.grad is not None:
            scale = q.grad.abs().max().item() + 1e-6
            assert (p.grad - q.grad).abs().max().item() <= 0.05 * scale, n
