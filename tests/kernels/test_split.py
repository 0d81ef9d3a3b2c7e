"""The split products (``kernels/cpu/split.py``): fp32 products of spikes as exact bf16 products summed in fp32.

A weight or gradient splits into three bf16 pieces whose sum is the fp32 value exactly; spikes and spike counts are
bf16 already. So on integer-valued data whose sums stay below 2^24 every result must equal the float64 product bit
for bit, whatever the order of the sums, also where the integers need all three pieces; with random weights results
differ from the fp32 GEMM by rounding only. The GEMM is MKL's bf16 one: on CPUs without AMX these tests force the
route on (it computes the same values there, only slower)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeformer.kernels import cpu
from spikeformer.kernels.cpu import bf16, lut, split
from spikeformer.layers import sparse as SL

pytestmark = pytest.mark.skipif(not cpu.available() or split._mkl_gemm() is None,
                                reason="compiled CPU kernels or MKL's bf16 GEMM unavailable")


@pytest.fixture(autouse=True)
def _split_on():
    split.forget()
    with split.use(True):
        yield
    split.forget()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _counts(shape, seed, top=3):
    return torch.randint(0, top + 1, shape, generator=_gen(seed)).float() * (torch.rand(shape, generator=_gen(seed + 1)) < 0.4)


def _ints(shape, lo, hi, seed):
    return torch.randint(lo, hi + 1, shape, generator=_gen(seed)).float()


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-20, 3e20])
def test_pieces_sum_to_the_fp32_values_exactly(scale):
    t = torch.randn(37, 53, generator=_gen(0)) * scale
    t[0, :5] = torch.tensor([0.0, -0.0, 1.0, -1.5, 2.0 ** -60])
    stacked = split.pieces(t)
    assert stacked.shape == (3, 37, 53) and stacked.dtype == torch.bfloat16
    lo, mid, hi = stacked.double()
    assert torch.equal(lo + mid + hi, t.double())
    # smallest first: each piece at most 2^-8 of the one above it
    assert bool((mid.abs() <= hi.abs() * 2 ** -7).all() and (lo.abs() <= mid.abs() * 2 ** -7).all())
    # a strided view (a transposed weight) splits the same values
    assert torch.equal(split.pieces(t.t().contiguous().t()), stacked)


def test_pack_tells_spikes_counts_and_real_values_apart():
    spikes = (torch.rand(9, 70, generator=_gen(1)) < 0.3).float()
    xs, counts = split.pack(spikes)
    assert xs.dtype == torch.bfloat16 and torch.equal(xs.float(), spikes) and counts is False
    c = spikes * 3
    xs, counts = split.pack(c)
    assert torch.equal(xs.float(), c) and counts is True
    assert split.pack(spikes + 0.1) is None  # not a bf16 exactly
    assert split.pack(torch.full((2, 3), 257.0)) is None  # 257 needs 9 significant bits
    assert split.pack(torch.full((2, 3), 256.0))[1] is True


@pytest.mark.parametrize("R,K,N", [(64, 64, 16), (61, 70, 48), (7, 3, 5), (300, 129, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_exact_on_integers(R, K, N, bias):
    x0 = _counts((R, K), 2)
    # integers of up to 13 and 15 bits: the weights and the gradients need their middle pieces (the last piece of
    # values of more than 16 bits: test_pieces_sum_to_the_fp32_values_exactly)
    w0, b0 = _ints((N, K), -4096, 4096, 3), _ints((N,), -8, 8, 4) if bias else None
    g = _ints((R, N), -30000, 30000, 5)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    b = None if b0 is None else b0.clone().requires_grad_()
    y = split.split_linear(x, w, b)
    assert y is not None and y.dtype == torch.float32 and y.grad_fn.name() == "SplitLinearBackward"
    grads = torch.autograd.grad((y * g).sum(), [x, w] + ([b] if bias else []))
    ref = F.linear(x0.double(), w0.double(), None if b0 is None else b0.double())
    assert torch.equal(y.double(), ref)
    gw_ref = g.double().t() @ x0.double()
    assert gw_ref.abs().max() < 2 ** 24  # every partial sum exact in fp32
    assert torch.equal(grads[1].double(), gw_ref)
    assert torch.equal(grads[0], g @ w0)  # the input gradient is the fp32 GEMM itself
    if bias:
        assert torch.equal(grads[2], g.sum(0))


def test_random_weights_within_fp32_rounding():
    torch.manual_seed(12)
    lin = nn.Linear(384, 96)
    x = _counts((512, 384), 13).requires_grad_()
    y = split.split_linear(x, lin.weight, lin.bias)
    ref = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    err, err32 = (y.double() - ref).abs().max(), (F.linear(x, lin.weight, lin.bias).double() - ref).abs().max()
    assert err <= 4 * err32 + 1e-6  # the fp32 GEMM's own rounding, up to the order of the sums
    g = torch.randn(512, 96, generator=_gen(14))
    gw = torch.autograd.grad((y * g).sum(), lin.weight)[0]
    gref = g.double().t() @ x.detach().double()
    gerr, gerr32 = (gw.double() - gref).abs().max(), ((g.t() @ x.detach()).double() - gref).abs().max()
    assert gerr <= 4 * gerr32 + 1e-6


def test_gives_up_where_it_does_not_apply():
    x, w = _counts((20, 16), 20), torch.randn(8, 16)
    assert split.split_linear(x + 0.1, w, None) is None  # real-valued input (x + 0.5 would be bf16 exactly)
    assert split.split_linear(x.double(), w.double(), None) is None
    spikes = (x > 0).float()
    assert split.split_linear(spikes, w, None, spikes=False) is None  # 0/1 only: the caller's lookups
    assert split.split_linear(spikes, w, None) is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert split.split_linear(x, w, None) is None
    with split.use(False):
        assert split.split_linear(x, w, None) is None


def test_q_k_v_of_one_input_pack_it_once(monkeypatch):
    calls = []
    real = split.pack
    monkeypatch.setattr(split, "pack", lambda x2d: calls.append(1) or real(x2d))
    x = _counts((40, 64), 15)
    w = torch.randn(3, 32, 64)
    ys = [split.split_linear(x, w[i], None) for i in range(3)]
    assert len(calls) == 1
    for i in range(3):
        torch.testing.assert_close(ys[i], x @ w[i].t(), rtol=1e-5, atol=1e-5)
    x[0, 0] = 2.0 - x[0, 0]  # changed in place: packed again
    torch.testing.assert_close(split.split_linear(x, w[0], None), x @ w[0].t(), rtol=1e-5, atol=1e-5)
    assert len(calls) == 2


def test_layers_take_split_products_for_counts_and_lookups_for_spikes(monkeypatch):
    used = []
    for name, fn in (("split", split.SplitLinear), ("lut", lut.NativeLutLinear)):
        real = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, real=real, name=name: used.append(name) or real(*a))
    lin = nn.Linear(128, 32)
    spikes = (torch.rand(512, 128, generator=_gen(40)) < 0.3).float()
    counts = spikes + (torch.rand(512, 128, generator=_gen(41)) < 0.05).float()
    assert SL.SPLIT_MIN_ROWS > 512 and SL.SPLIT_MIN_IN > 128
    SL.spike_linear(lin, counts)
    monkeypatch.setattr(SL, "SPLIT_MIN_ROWS", 512)
    SL.spike_linear(lin, counts)
    assert used == ["lut", "lut"]  # fewer rows than SPLIT_MIN_ROWS, then fewer inputs than SPLIT_MIN_IN: lookups
    monkeypatch.setattr(SL, "SPLIT_MIN_IN", 128)
    used.clear()
    for x in (spikes, counts):
        torch.testing.assert_close(SL.spike_linear(lin, x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    assert used == ["lut", "split"]
    with split.use(False):  # no AMX: the lookups take the counts too
        SL.spike_linear(lin, counts * 1.0)
    assert used == ["lut", "split", "lut"]


def test_inference_keeps_the_weight_pieces_until_the_weight_changes(monkeypatch):
    monkeypatch.setattr(SL, "SPLIT_MIN_ROWS", 512)
    monkeypatch.setattr(SL, "SPLIT_MIN_IN", 64)
    made = []
    real = split.pieces
    monkeypatch.setattr(split, "pieces", lambda t, *a: made.append(tuple(t.shape)) or real(t, *a))
    lin = nn.Linear(64, 16)
    x = _counts((512, 64), 50)
    with torch.no_grad():
        y1 = SL.spike_linear(lin, x)
        SL.spike_linear(lin, x)
        assert made == [(16, 64)]  # kept
        lin.weight.mul_(2)  # bumps the version counter: pieces made again
        y2 = SL.spike_linear(lin, x)
        assert made == [(16, 64)] * 2
    torch.testing.assert_close(y2 - lin.bias, 2 * (y1 - lin.bias), rtol=1e-5, atol=1e-5)


def test_same_bits_on_every_call_and_thread_count():
    # seeded runs repeat, and a resumed run equals the uninterrupted one: MKL's bf16 GEMM sums in a fixed order
    x, w, g = _counts((1024, 384), 60), torch.randn(96, 384, generator=_gen(61)), torch.randn(1024, 96, generator=_gen(62))
    xs, _ = split.pack(x)
    w3 = split.pieces(w)
    first = split.products(xs, w3, None), split.weight_grad(g, xs)
    saved = torch.get_num_threads()
    # where the route runs (AMX tiles) also across thread counts; elsewhere MKL promises that only for a fixed count
    counts = (saved, 1, saved) if bf16.amx() else (saved, saved)
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            again = split.products(xs, w3, None), split.weight_grad(g, xs)
            assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    finally:
        torch.set_num_threads(saved)


def test_a_spikformer_step_runs_its_projections_of_counts_through_the_split_products(monkeypatch):
    """A whole model: Spikformer's residual stream (spike counts) reaches its q/k/v and MLP projections; with the
    size rules lowered to this small model the split products take them, each equal to the float64 product up to
    fp32 rounding, and the step's gradients are finite. (Layer by layer: a spike one rounding from its threshold
    could flip between two summation orders and move the logits.)"""
    import spikeformer

    monkeypatch.setattr(SL, "SPLIT_MIN_ROWS", 0)
    monkeypatch.setattr(SL, "SPLIT_MIN_IN", 0)
    seen = []
    real = split.SplitLinear.apply

    def record(x2d, weight, bias, *rest):
        out = real(x2d, weight, bias, *rest)
        seen.append((x2d.detach().clone(), weight.detach().clone(), None if bias is None else bias.detach().clone(),
                     out.detach().clone()))
        return out

    monkeypatch.setattr(split.SplitLinear, "apply", record)
    torch.manual_seed(0)
    model = spikeformer.create_model("spikformer_digits_1_64", T=2).train()
    x = torch.rand(32, 1, 16, 16, generator=_gen(70))  # 1024 token rows: enough for the lookups (LUT_MIN_ROWS)
    y = torch.randint(0, 10, (32,), generator=_gen(71))
    F.cross_entropy(model(x), y).backward()
    assert len(seen) >= 2  # q/k/v (packed once) and the MLP's first layer
    assert any(bool((x2d > 1).any()) for x2d, *_ in seen)  # counts, not only spikes
    for x2d, w, b, out in seen:
        ref = F.linear(x2d.double(), w.double(), None if b is None else b.double())
        err32 = (F.linear(x2d, w, b).double() - ref).abs().max()
        assert (out.double() - ref).abs().max() <= 4 * err32 + 1e-6
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
