"""The table-lookup products of binary spikes (``kernels/cpu/lut.py``): codes, forward and both gradients against a
float64 dense product. On integer-valued data every sum is exact in any order, so results must match bit for bit;
with random weights they differ from the dense product by fp32 rounding only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeformer.kernels import cpu
from spikeformer.kernels.cpu import bf16, lut
from spikeformer.layers import sparse as SL

pytestmark = pytest.mark.skipif(not cpu.available(), reason="compiled CPU kernels unavailable")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spikes(shape, density, seed):
    return (torch.rand(shape, generator=_gen(seed)) < density).float()


def _ints(shape, lo, hi, seed):
    return torch.randint(lo, hi + 1, shape, generator=_gen(seed)).float()


def test_codes_are_the_bits_of_four_columns_and_of_four_rows():
    x = _spikes((10, 11), 0.4, 0)  # neither dimension a multiple of 4
    codes, codes_t = lut.pack(x)
    assert codes.shape == (10, 3) and codes_t.shape == (3, 11)
    xb = torch.nn.functional.pad(x, (0, 1, 0, 2)).to(torch.uint8)  # [12, 12], zero padded
    want = sum(xb[:, j::4] << j for j in range(4))[:10]
    want_t = sum(xb[j::4, :] << j for j in range(4))[:, :11]
    assert torch.equal(codes, want) and torch.equal(codes_t, want_t)
    x[3, 5] = -0.0  # negative zero is a zero
    assert lut.pack(x) is not None
    x[3, 5] = 2.0
    assert lut.pack(x) is None  # not 0/1


@pytest.mark.parametrize("R,K,N", [(64, 64, 16), (61, 70, 48), (7, 3, 32), (300, 129, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_and_gradients_exact_on_integers(R, K, N, bias):
    x0 = _spikes((R, K), 0.3, 1)
    w0, b0 = _ints((N, K), -4, 4, 2), _ints((N,), -8, 8, 3) if bias else None
    g = _ints((R, N), -3, 3, 4)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    b = None if b0 is None else b0.clone().requires_grad_()
    y = lut.lut_linear(x, w, b, torch.float32)
    assert y is not None and y.dtype == torch.float32
    grads = torch.autograd.grad((y * g).sum(), [x, w] + ([b] if bias else []))
    ref = F.linear(x0.double(), w0.double(), None if b0 is None else b0.double())
    assert torch.equal(y.double(), ref)
    assert torch.equal(grads[0].double(), g.double() @ w0.double())
    assert torch.equal(grads[1].double(), g.double().t() @ x0.double())
    if bias:
        assert torch.equal(grads[2].double(), g.double().sum(0))


@pytest.mark.parametrize("R,K,N", [(64, 64, 16), (300, 129, 48), (513, 40, 32)])
def test_inference_forward_exact_on_integers(R, K, N):
    """Without gradients the output is written past the caches (non-temporal stores): same values, counts too."""
    x = _spikes((R, K), 0.3, 60) * torch.where(torch.rand(R, K, generator=_gen(61)) < 0.05, 2.0, 1.0)
    w, b = _ints((N, K), -4, 4, 62), _ints((N,), -8, 8, 63)
    with torch.no_grad():
        y = lut.lut_linear(x, w, b, torch.float32)
    assert torch.equal(y.double(), F.linear(x.double(), w.double(), b.double()))


def test_spike_counts_split_into_indicator_and_listed_rest():
    """Summed spikes (Spikformer's residual stream): the 0/1 indicator by lookups, the counts above 1 listed."""
    x0 = _spikes((96, 40), 0.3, 5) * torch.where(torch.rand(96, 40, generator=_gen(6)) < 0.1, 3.0, 1.0)
    assert x0.max() == 3 and lut.pack(x0) is None
    w0, b0, g = _ints((32, 40), -4, 4, 7), _ints((32,), -4, 4, 8), _ints((96, 32), -2, 2, 9)
    x, w, b = x0.clone().requires_grad_(), w0.clone().requires_grad_(), b0.clone().requires_grad_()
    y = lut.lut_linear(x, w, b, torch.float32)
    gx, gw, gb = torch.autograd.grad((y * g).sum(), [x, w, b])
    assert torch.equal(y.double(), F.linear(x0.double(), w0.double(), b0.double()))
    assert torch.equal(gw.double(), g.double().t() @ x0.double())
    assert torch.equal(gx.double(), g.double() @ w0.double())


@pytest.mark.parametrize("transposed", [True, False])
def test_counts_packed_in_one_pass_equal_indicator_codes_and_listed_rest(transposed):
    """``pack_counts`` against its definition: the codes of ``x != 0`` and the nonzeros of ``x - (x != 0)``."""
    x = _spikes((83, 45), 0.3, 60) * torch.randint(1, 5, (83, 45), generator=_gen(61)).float()  # counts 0..4
    x[5, 7], x[9, 0] = -0.0, 2.5  # a negative zero is a zero; any other value than 0 and 1 goes to the rest
    indicator = (x != 0).float()
    (codes, codes_t), rest = lut.pack_counts(x, transposed, max_density=1.0)
    want_codes, want_t = lut.pack(indicator, transposed)
    assert torch.equal(codes, want_codes) and (codes_t is None if not transposed else torch.equal(codes_t, want_t))
    rs, re, col, val = rest
    dense = torch.zeros_like(x)
    for r in range(x.shape[0]):
        c = col[rs[r]:re[r]].long()
        assert torch.all(c[1:] > c[:-1])  # each row's entries in column order, once each
        dense[r, c] = val[rs[r]:re[r]]
    assert torch.equal(dense, x - indicator)
    # binary input: no rest; more of the rest than max_density: none at all
    binary = lut.pack_counts(indicator, transposed)
    assert binary[1] is None and torch.equal(binary[0][0], want_codes)
    frac = ((x != 0) & (x != 1)).float().mean().item()
    assert lut.pack_counts(x, transposed, max_density=frac * 0.9) is None
    assert lut.pack_counts(x, transposed, max_density=frac * 1.01) is not None


def test_linear_gives_up_where_it_does_not_apply():
    w = torch.randn(32, 64)
    x = _spikes((20, 64), 0.3, 10)
    assert lut.lut_linear(x * torch.rand(20, 64, generator=_gen(11)), w, None, torch.float32) is None  # real values
    assert lut.lut_linear(x, torch.randn(24, 64), None, torch.float32) is None  # outputs not a multiple of 16
    assert lut.lut_linear(x, w, None, torch.bfloat16) is None  # bf16 compute: the listing or dense products
    assert lut.lut_linear(x.t().contiguous().t(), w, None, torch.float32) is None  # not contiguous


def test_random_weights_within_fp32_rounding():
    torch.manual_seed(12)
    lin = nn.Linear(384, 64)
    x = _spikes((512, 384), 0.27, 13).requires_grad_()
    y = lut.lut_linear(x, lin.weight, lin.bias, torch.float32)
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    g = torch.randn(512, 64, generator=_gen(14))
    gw = torch.autograd.grad((y * g).sum(), lin.weight)[0]
    torch.testing.assert_close(gw, g.t() @ x.detach(), rtol=1e-5, atol=1e-4)


def test_q_k_v_of_one_input_pack_it_once(monkeypatch):
    calls = []
    real = lut.pack_counts
    monkeypatch.setattr(lut, "pack_counts", lambda x2d, *a: calls.append(1) or real(x2d, *a))
    x = _spikes((40, 64), 0.3, 15)
    w = torch.randn(3, 32, 64)
    ys = [lut.lut_linear(x, w[i], None, torch.float32) for i in range(3)]
    assert len(calls) == 1
    for i in range(3):
        torch.testing.assert_close(ys[i], x @ w[i].t(), rtol=1e-5, atol=1e-5)
    x[0, 0] = 1.0 - x[0, 0]  # changed in place: packed again
    y = lut.lut_linear(x, w[0], None, torch.float32)
    assert len(calls) == 2
    torch.testing.assert_close(y, x @ w[0].t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M,C,H,W,Cout", [(3, 8, 9, 11, 32), (1, 4, 1, 1, 16), (2, 12, 5, 3, 48), (1, 16, 2, 7, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv3x3_forward_and_gradients_exact_on_integers(M, C, H, W, Cout, bias):
    x0 = _spikes((M, C, H, W), 0.3, 20).contiguous(memory_format=torch.channels_last)
    w0, b0 = _ints((Cout, C, 3, 3), -4, 4, 21), _ints((Cout,), -8, 8, 22) if bias else None
    g = _ints((M, Cout, H, W), -1, 1, 23)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    b = None if b0 is None else b0.clone().requires_grad_()
    y = lut.lut_conv3x3(x, w, b, torch.float32)
    assert y is not None and y.is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad((y * g).sum(), [x, w] + ([b] if bias else []))
    xr, wr = x0.double().requires_grad_(), w0.double().requires_grad_()
    ref = F.conv2d(xr, wr, None if b0 is None else b0.double(), padding=1)
    gx_ref, gw_ref = torch.autograd.grad((ref * g.double()).sum(), (xr, wr))
    assert torch.equal(y.double(), ref.detach())
    assert torch.equal(grads[0].double(), gx_ref)
    assert torch.equal(grads[1].double(), gw_ref)
    if bias:
        assert torch.equal(grads[2].double(), g.double().sum((0, 2, 3)))


def test_conv3x3_gives_up_where_it_does_not_apply():
    x = _spikes((2, 8, 5, 5), 0.3, 30).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3)
    assert lut.lut_conv3x3(x * 2, w, None, torch.float32) is None  # not 0/1
    assert lut.lut_conv3x3(x.contiguous(), w, None, torch.float32) is None  # NCHW
    x6 = _spikes((2, 6, 5, 5), 0.3, 31).contiguous(memory_format=torch.channels_last)
    assert lut.lut_conv3x3(x6, torch.randn(16, 6, 3, 3), None, torch.float32) is None  # channels not a multiple of 4


def test_layers_choose_lookups_for_dense_fp32_spikes_and_listing_for_sparse(monkeypatch):
    monkeypatch.setattr(SL, "MIN_LIST_MACS", 0)  # a small product listed all the same (its own test: test_sparse.py)
    used = []
    real_apply = lut.NativeLutLinear.apply
    monkeypatch.setattr(lut.NativeLutLinear, "apply", lambda *a: used.append("lut") or real_apply(*a))
    lin = nn.Linear(128, 32)
    dense, sparse = _spikes((512, 128), 0.3, 40), _spikes((512, 128), 0.02, 41)
    for x in (dense, sparse):
        torch.testing.assert_close(SL.spike_linear(lin, x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    assert used == ["lut"]  # the sparse input was listed
    assert SL.spike_linear(lin, dense[:64]) is None and used == ["lut"]  # 64 rows: the caller's dense product
    with torch.autocast("cpu", dtype=torch.bfloat16), bf16.emulation(False):
        SL.spike_linear(lin, dense)
    assert used == ["lut"]  # bf16 products (a CPU with bf16 instructions): no lookups
    with torch.autocast("cpu", dtype=torch.bfloat16), bf16.emulation(True):
        y16 = SL.spike_linear(lin, dense)
    # bf16 products emulated: the fp32 lookups on the bf16-rounded weights, the result rounded to bf16
    assert used == ["lut", "lut"] and y16.dtype == torch.bfloat16
    ref = F.linear(dense, lin.weight.bfloat16().float(), lin.bias.bfloat16().float())
    torch.testing.assert_close(y16.float(), ref.bfloat16().float(), rtol=2 ** -8, atol=1e-6)


def test_inference_packs_no_transposed_codes_and_a_later_training_call_repacks():
    x = _spikes((40, 64), 0.3, 50)
    w = torch.randn(32, 64, requires_grad=True)
    with torch.no_grad():
        assert lut._codes_of(x, False)[0][1] is None
        lut.lut_linear(x, w, None, torch.float32)
    y = lut.lut_linear(x, w, None, torch.float32)  # same input, now with a weight gradient to form
    gw = torch.autograd.grad(y.sum(), w)[0]
    torch.testing.assert_close(gw, torch.ones(40, 32).t() @ x, rtol=1e-5, atol=1e-5)
    xc = _spikes((1, 8, 4, 4), 0.3, 51).contiguous(memory_format=torch.channels_last)
    codes, codes_t = lut.pack_conv3x3(xc, transposed=False)
    assert codes_t is None and torch.equal(codes, lut.pack_conv3x3(xc)[0])
