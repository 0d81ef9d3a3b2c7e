"""Weights in the layouts of the compiled products, kept across inference calls while unchanged
(``kernels/cpu/weights.py``)."""

import gc

import pytest
import torch
from torch import nn

from spikeformer.kernels.cpu import weights


@pytest.mark.parametrize("kind,shape,want", [("linear", (48, 32), lambda w: w.t()),
                                             ("conv3x3", (16, 8, 3, 3), lambda w: w.permute(2, 3, 1, 0))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layout_is_kept_in_inference_until_the_weight_changes(kind, shape, want, dtype):
    w = nn.Parameter(torch.randn(shape))
    with torch.no_grad():
        a = weights.layout(w, dtype, kind)
        assert a.is_contiguous() and a.dtype == dtype and torch.equal(a, want(w.detach()).to(dtype))
        assert weights.layout(w, dtype, kind) is a  # kept
        assert weights.layout(w, torch.float32 if dtype == torch.bfloat16 else torch.bfloat16, kind) is not a
        w.mul_(2.0)  # in place: the version counter moves
        b = weights.layout(w, torch.float32, kind)
        assert torch.equal(b, want(w.detach()))
        w.copy_(torch.randn(shape))  # load_state_dict does this
        assert torch.equal(weights.layout(w, torch.float32, kind), want(w.detach()))
    # with gradients on (training), nothing is kept and the stale entry goes
    c = weights.layout(w, torch.float32, kind)
    assert torch.equal(c, want(w.detach())) and (id(w), kind) not in weights._cache
    assert weights.layout(w, torch.float32, kind) is not c


def test_entry_goes_with_its_weight():
    w = torch.randn(32, 16)
    with torch.no_grad():
        weights.layout(w, torch.float32, "linear")
    key = (id(w), "linear")
    assert key in weights._cache
    del w
    gc.collect()
    assert key not in weights._cache


def test_each_kind_of_a_weight_is_kept():
    # a convolution whose input density moves across the listing / Winograd boundary reads both layouts in turn
    w = torch.randn(64, 48, 3, 3)
    with torch.no_grad():
        a = weights.layout(w, torch.float32, "conv3x3")
        u = weights.layout(w, torch.float32, "winograd")
        assert u.shape == (36, 48, 64)
        assert weights.layout(w, torch.float32, "conv3x3") is a and weights.layout(w, torch.float32, "winograd") is u


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown weight layout"):
        weights.layout(torch.randn(4, 4), torch.float32, "conv1x1")


def test_inference_reuses_the_layout_and_follows_a_weight_update():
    # a Linear on spikes through the listed product: outputs follow an in-place weight change between calls
    from spikeformer.layers.sparse import spike_linear

    lin = nn.Linear(256, 128)  # large enough to be listed (layers/sparse.py: MIN_LIST_MACS)
    x = (torch.rand(2048, 256, generator=torch.Generator().manual_seed(0)) < 0.05).float()
    with torch.no_grad():
        y0 = spike_linear(lin, x)
        assert y0 is not None
        torch.testing.assert_close(y0, nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        lin.weight.mul_(-1.0)
        y1 = spike_linear(lin, x)
        torch.testing.assert_close(y1, nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_inference_follows_an_optimizer_step(fused):
    """A fused optimizer step does not bump the weights' version counters (torch 2.14): the kept layouts go at every
    optimizer step, or an evaluation after training would read the previous evaluation's copies."""
    from spikeformer.layers.sparse import spike_linear

    lin = nn.Linear(256, 128)  # large enough to be listed (layers/sparse.py: MIN_LIST_MACS)
    x = (torch.rand(2048, 256, generator=torch.Generator().manual_seed(0)) < 0.05).float()
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, fused=fused, foreach=None if fused else False)
    with torch.no_grad():
        spike_linear(lin, x)  # kept
    lin(x).square().mean().backward()
    opt.step()
    with torch.no_grad():
        y = spike_linear(lin, x)
        torch.testing.assert_close(y, nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,shape", [("linear", (37, 50)), ("linear", (1, 7)), ("conv3x3", (17, 5, 3, 3)),
                                        ("conv3x3", (48, 96, 3, 3))])
def test_compiled_reorder_equals_torch_permute(dtype, kind, shape):
    # row counts off the 16-row blocks; a non-contiguous weight is made contiguous first
    w = torch.randn(shape).to(dtype)
    want = w.t().contiguous() if kind == "linear" else w.permute(2, 3, 1, 0).contiguous()
    got = weights.make(w, dtype, kind)
    assert got.is_contiguous() and torch.equal(got, want)
    wn = torch.randn(tuple(reversed(shape))).to(dtype).permute(*reversed(range(len(shape))))  # strided view
    want = wn.t().contiguous() if kind == "linear" else wn.permute(2, 3, 1, 0).contiguous()
    assert torch.equal(weights.make(wn, dtype, kind), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,shape", [("linear", (48, 37)), ("linear", (16, 1)), ("conv3x3", (32, 5, 3, 3))])
@pytest.mark.parametrize("compiled", [True, False])
def test_tiled_layouts_are_runs_of_16_outputs(dtype, kind, shape, compiled, monkeypatch):
    # the lookup products' layout: [N / 16, K, 16] / [Cout / 16, 3, 3, Cin, 16], by the compiled reorder and by torch
    if not compiled:
        monkeypatch.setattr(weights.build, "available", lambda: False)
    w = torch.randn(shape).to(dtype)
    flat = w.t().contiguous() if kind == "linear" else w.permute(2, 3, 1, 0).contiguous()
    got = weights.make(w, dtype, kind + "_tiles")
    want = flat.view(*flat.shape[:-1], shape[0] // 16, 16).movedim(-2, 0)
    assert got.is_contiguous() and got.shape == want.shape and torch.equal(got, want)


def test_tiled_layout_needs_whole_tiles():
    with pytest.raises(ValueError, match="multiple of 16"):
        weights.make(torch.randn(40, 8), torch.float32, "linear_tiles")
