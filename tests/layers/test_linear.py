"""The opt-in oneDNN Linear (layers/linear.py) against nn.Linear."""

import pytest
import torch
from torch import nn

import spikeformer
from spikeformer.layers import OneDNNLinear, use_exact_linear, use_onednn_linear
from spikeformer.neurons import _kernels_linear

needs_onednn = pytest.mark.skipif(_kernels_linear._dnnl is None, reason="this PyTorch build has no oneDNN")


@pytest.fixture
def onednn_on(monkeypatch):
    """The oneDNN GEMMs whatever this CPU's measured choice is (kernels/cpu/linear.py: onednn_pays)."""
    from spikeformer.kernels.cpu import linear as L

    monkeypatch.setattr(L, "_choice", True)


def test_gemm_choice_follows_the_cpu_unless_the_environment_asks(monkeypatch):
    from spikeformer.errors import SpikeformerError
    from spikeformer.kernels.cpu import linear as L

    calls = []
    monkeypatch.setattr(L, "_measure_onednn", lambda: calls.append(1) or True)
    have = L._dnnl is not None
    # the default never looks at the clock (a seeded run gives the same weights in every process on one machine):
    # oneDNN on AMD CPUs with AVX512, where MKL runs its AVX2 kernels; the BLAS elsewhere
    for cpu_rule in (False, True):
        monkeypatch.setattr(L, "_cpu_prefers_onednn", lambda: cpu_rule)
        for env, want in ((None, cpu_rule), ("", cpu_rule), ("blas", False), ("oneDNN", True)):
            monkeypatch.setattr(L, "_choice", None)
            if env is None:
                monkeypatch.delenv("SPIKEFORMER_CPU_GEMM", raising=False)
            else:
                monkeypatch.setenv("SPIKEFORMER_CPU_GEMM", env)
            assert L.onednn_pays() is (want and have)
    assert calls == []
    monkeypatch.setattr(L, "_choice", None)
    monkeypatch.setenv("SPIKEFORMER_CPU_GEMM", "mkl")
    with pytest.raises(SpikeformerError, match="SPIKEFORMER_CPU_GEMM must be 'blas', 'onednn' or 'auto'"):
        L.onednn_pays()
    monkeypatch.setenv("SPIKEFORMER_CPU_GEMM", "auto")  # measured once, then kept
    monkeypatch.setattr(L, "_choice", None)
    assert L.onednn_pays() is have and L.onednn_pays() is have
    assert calls == ([1] if have else [])
    monkeypatch.setattr(L, "_choice", False)  # BLAS chosen: the layer is F.linear, bit for bit
    layer = OneDNNLinear(32, 16)
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


@needs_onednn
def test_forward_and_gradients_match_nn_linear_within_rounding(onednn_on):
    torch.manual_seed(0)
    ref = nn.Linear(96, 200)
    fast = nn.Linear(96, 200)
    fast.load_state_dict(ref.state_dict())
    assert use_onednn_linear(fast) == 1 and type(fast) is OneDNNLinear
    x = (torch.rand(4, 6, 50, 96) < 0.3).float().requires_grad_()  # spikes, [T, B, N, C]
    g = torch.randn(4, 6, 50, 200)
    outs = []
    for layer in (ref, fast):
        y = layer(x)
        via_onednn = "DnnlLinear" in type(y.grad_fn.next_functions[0][0]).__name__
        assert (type(layer) is OneDNNLinear) == via_onednn
        grads = torch.autograd.grad((y * g).sum(), (x, layer.weight, layer.bias))
        outs.append((y, *grads))
    assert outs[1][0].shape == (4, 6, 50, 200)
    for a, b in zip(outs[1], outs[0]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


@needs_onednn
def test_model_switch_keeps_state_dict_and_is_reversible(onednn_on):
    torch.manual_seed(1)
    model = spikeformer.create_model("spikformer_digits_1_64", numerics="exact")
    keys = list(model.state_dict())
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert use_onednn_linear(model) == n_linear > 0
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert use_exact_linear(model) == n_linear
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=0, rtol=0)


def test_autocast_and_other_dtypes_take_plain_linear():
    torch.manual_seed(2)
    layer = nn.Linear(32, 16)
    use_onednn_linear(layer)
    x = (torch.rand(10, 32) < 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    xd = x.double()
    torch.testing.assert_close(layer.double()(xd), torch.nn.functional.linear(xd, layer.weight, layer.bias),
                               atol=0, rtol=0)


@needs_onednn
def test_fast_kernels_switch_every_fast_path_and_back():
    from spikeformer.layers import TokenBN, use_exact_kernels, use_fast_kernels
    from spikeformer.models.spikformer import SPS

    torch.manual_seed(3)
    model = spikeformer.create_model("spikformer_cifar_4_256", T=2, numerics="exact").train()  # batch statistics: lively
    from spikeformer.layers import NumericsAware

    # plain Linear layers (the head) swap class; every numerics-aware block (TokenLinear, TokenBN, the stem) switches
    n_switch = sum(type(m) is nn.Linear or isinstance(m, NumericsAware) for m in model.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert use_fast_kernels(model) == n_switch
    assert all(m.fast for m in model.modules() if isinstance(m, (TokenBN, SPS)))
    spikes = {}

    def hook(tag):
        return lambda m, i, o: spikes.setdefault(tag, []).append(o.detach().flatten())

    lifs = [m for m in model.modules() if type(m).__name__ == "LIF"]
    for tag, switch in (("fast", None), ("exact", use_exact_kernels)):
        if switch:
            assert switch(model) == n_switch
        hs = [m.register_forward_hook(hook(tag)) for m in lifs]
        with torch.no_grad():
            out = model(x)
        for h in hs:
            h.remove()
        if tag == "exact":
            torch.testing.assert_close(out, ref, atol=0, rtol=0)  # back to the official bits
    fast, exact = torch.cat(spikes["fast"]), torch.cat(spikes["exact"])
    assert 0.01 < exact.mean() < 0.5
    # the fast kernels only round differently: spikes flip only where a pre-activation sits at the threshold
    assert (fast == exact).float().mean() > 0.995


@pytest.mark.parametrize("in_chans", [1, 3])
def test_fast_stem_keeps_frames_channels_last_from_any_channel_count(in_chans, monkeypatch):
    # with one input channel NCHW and channels-last strides coincide and oneDNN would hand back NCHW frames, which
    # made max-pool and BatchNorm take their slow NCHW kernels for the whole stem (the digits model)
    from spikeformer.layers import stems as family
    from spikeformer.layers import use_fast_kernels

    layouts = []

    def spy(pool, x):
        layouts.append(x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1)
        return pool(x)

    monkeypatch.setattr(family, "max_pool", spy)
    model = spikeformer.create_model("spikformer_cifar_4_256", T=2, in_chans=in_chans, numerics="exact")
    use_fast_kernels(model)
    with torch.no_grad():
        model(torch.randn(2, in_chans, 32, 32))
    assert len(layouts) == 2 and all(layouts)


def test_cpu_rule_reads_the_vendor(monkeypatch):
    """oneDNN by default only on an AMD CPU with AVX512 (kernels/cpu/linear.py: _cpu_prefers_onednn)."""
    import builtins
    import io

    from spikeformer.kernels.cpu import linear as L

    real_open = builtins.open
    for cap, vendor, want in (("AVX512", "AuthenticAMD", True), ("AVX512", "GenuineIntel", False),
                              ("AVX2", "AuthenticAMD", False), ("DEFAULT", "AuthenticAMD", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda cap=cap: cap)
        text = f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t: fpu\n"
        monkeypatch.setattr(builtins, "open", lambda path, *a, text=text, **k: io.StringIO(text)
                            if path == "/proc/cpuinfo" else real_open(path, *a, **k))
        assert L._cpu_prefers_onednn() is want, (cap, vendor)


@needs_onednn
@pytest.mark.parametrize("route", [True, False])
def test_kernel_gemms_equal_the_blas_within_rounding(monkeypatch, route):
    """mm and bmm_into (the dense products inside the compiled kernels' backward and Winograd) on either route, at
    shapes above and below their size limits, with transposed operands."""
    from spikeformer.kernels.cpu import linear as L

    monkeypatch.setattr(L, "_choice", route)
    g = torch.Generator().manual_seed(3)
    for M, K, N in ((512, 384, 96), (16, 8, 24), (300, 200, 160)):
        a = torch.randn(M, K, generator=g)
        w = torch.randn(N, K, generator=g)
        for b in (w.t(), w.t().contiguous()):
            got = L.mm(a, b)
            ref = torch.mm(a.double(), b.double()).float()
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    # the weight gradient g^T x: below and above WGRAD_ROWS, with more gradient rows than columns and fewer
    for M, N, K in ((600, 384, 96), (40, 8, 24), (5000, 160, 40), (5000, 40, 160)):
        gr, x = torch.randn(M, N, generator=g), torch.randn(M, K, generator=g)
        ref = torch.mm(gr.double().t(), x.double()).float()
        torch.testing.assert_close(L.weight_grad(gr, x), ref, atol=4e-6 * ref.abs().max().item(), rtol=1e-5)
    for B, M, K, N in ((3, 40, 192, 384), (2, 17, 8, 12)):
        a = torch.randn(B, M, K, generator=g)
        b = torch.randn(B, K, N, generator=g)
        out = torch.full((B, M, N), float("nan"))
        assert L.bmm_into(a, b, out) is out
        torch.testing.assert_close(out, torch.bmm(a.double(), b.double()).float(), atol=1e-4, rtol=1e-5)
    # bf16 (the listed products' backward under autocast): PyTorch's or the emulated product, never oneDNN's fp32
    a, b = torch.randn(64, 32, generator=g).bfloat16(), torch.randn(32, 48, generator=g).bfloat16()
    assert L.mm(a, b).dtype == torch.bfloat16
