"""The compiled CPU neuron kernel (neurons/neuron_cpu.cpp via neurons/_native.py) against the reference loop and the
pure-PyTorch kernel, on shapes that span several blocks and threads, and its fallback when it cannot be built."""

import pytest
import torch

from spikeformer.errors import SpikeformerError
from spikeformer.neurons import LIF, PLIF, ATan, Rectangle, Sigmoid
from spikeformer.neurons import _kernels, _native
from spikeformer.neurons import functional as F

pytestmark = pytest.mark.skipif(_native.library() is None, reason=f"no compiled kernel: {_native.build_error()}")


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hard,detach", [(True, True), (False, False), (True, False)])
def test_multi_block_forward_bits_and_gradients(two_threads, dtype, hard, detach):
    # 3 x 1100 = 3300 neurons per step: four blocks of 1024, the last one ragged
    torch.manual_seed(11)
    spec = F.NeuronSpec(1.0, 0.0 if hard else None, detach, True, True, 2.0)
    x = (torch.randn(5, 3, 1100) * 1.5 + 0.4).to(dtype).requires_grad_()
    gs = torch.randn(5, 3, 1100).to(dtype)
    out = {}
    for impl in ("reference", "torch", "native"):
        s, v = F.multi_step(x, spec, Sigmoid(4.0), impl=impl)
        (g,) = torch.autograd.grad((s * gs).float().sum() + v.sum(), x)
        out[impl] = (s, v, g)
    for impl in ("torch", "native"):
        s, v, g = out[impl]
        assert s.dtype == dtype and v.dtype == torch.float32 and g.dtype == dtype
        torch.testing.assert_close(s, out["reference"][0], atol=0, rtol=0)
        torch.testing.assert_close(v, out["reference"][1], atol=0, rtol=0)
    g_ref, g_native = out["reference"][2].float(), out["native"][2].float()
    if dtype == torch.float32:
        torch.testing.assert_close(g_native, g_ref, atol=1e-6, rtol=1e-5)
    else:  # bf16 gradients: one rounding step of bf16 apart at most
        assert ((g_native - g_ref).abs() <= g_ref.abs() * 2 ** -7 + 1e-30).all()
    assert 0.1 < out["native"][0].float().mean().item() < 0.9


def test_plif_rate_gradient_across_blocks(two_threads):
    torch.manual_seed(12)
    spec = F.NeuronSpec(1.0, 0.0, False, True, True, None)
    x = (torch.randn(4, 2500) * 1.5 + 0.5).requires_grad_()
    gs = torch.randn(4, 2500)
    res = {}
    for impl in ("reference", "native"):
        k = torch.tensor(0.4).requires_grad_()
        s, v = F.multi_step(x, spec, ATan(2.0), k, impl=impl)
        res[impl] = torch.autograd.grad((s * gs).sum() + v.sum(), (x, k))
    torch.testing.assert_close(res["native"][0], res["reference"][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res["native"][1], res["reference"][1], atol=1e-4, rtol=1e-5)


def test_only_final_membrane_gradient():
    torch.manual_seed(13)
    spec = F.NeuronSpec(1.0, 0.0, True, True, True, 2.0)
    x = (torch.randn(6, 40) + 0.5).requires_grad_()
    grads = [torch.autograd.grad(F.multi_step(x, spec, Sigmoid(), impl=impl)[1].sum(), x)[0]
             for impl in ("reference", "native")]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0


def test_neuron_modules_use_it_by_default(monkeypatch):
    calls = []
    real = _native.NativeMultiStep.apply
    monkeypatch.setattr(_native.NativeMultiStep, "apply", lambda *a: calls.append("grad") or real(*a))
    real_ng = _native.forward_no_grad
    monkeypatch.setattr(_native, "forward_no_grad", lambda *a: calls.append("no_grad") or real_ng(*a))
    x = torch.randn(4, 2, 8, requires_grad=True)
    LIF()(x)
    PLIF()(x)
    with torch.no_grad():
        LIF()(x)
    LIF(surrogate=Rectangle())(x)  # not compiled: the PyTorch kernel
    assert calls == ["grad", "grad", "no_grad"]


def test_native_impl_refuses_what_it_cannot_run():
    spec = F.NeuronSpec()
    with pytest.raises(SpikeformerError, match="compiled neuron kernel"):
        F.multi_step(torch.zeros(2, 3), spec, Rectangle(), impl="native")
    with pytest.raises(SpikeformerError, match="compiled neuron kernel"):
        F.multi_step(torch.zeros(2, 3, dtype=torch.float64), spec, Sigmoid(), impl="native")


def test_build_failure_falls_back_with_one_warning(monkeypatch, tmp_path):
    # a compiler that always fails: one RuntimeWarning, then the PyTorch kernel gives the same spikes
    fake = tmp_path / "failing-c++"
    fake.write_text("#!/bin/sh\necho 'error: broken compiler' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("SPIKEFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_error", None)
    x = torch.randn(3, 10) + 0.8
    with pytest.warns(RuntimeWarning, match="pure-PyTorch kernel"):
        s, _ = F.multi_step(x, F.NeuronSpec(), Sigmoid())
    assert _native.library() is None and "failed" in _native.build_error()
    s_ref, _ = F.multi_step(x, F.NeuronSpec(), Sigmoid(), impl="reference")
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))  # nothing half-written is left


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("SPIKEFORMER_NATIVE", "0")
    assert _native.library() is None
    assert _kernels.select_kernel(torch.zeros(1)) is _kernels.default_kernel
    x = torch.randn(3, 10, requires_grad=True)
    s, _ = F.multi_step(x, F.NeuronSpec(), Sigmoid())
    assert type(s.grad_fn).__name__.startswith("TorchMultiStep")


def test_channels_last_frames_keep_their_layout(two_threads):
    # the fast stem hands the neuron [T, B, C, H, W] with channels-last frames: no copy, outputs in the same layout
    torch.manual_seed(14)
    spec = F.NeuronSpec(1.0, 0.0, True, True, True, 2.0)
    x_cl = (torch.randn(4 * 3, 8, 6, 5) * 1.5 + 0.4).contiguous(memory_format=torch.channels_last)
    x_cl = x_cl.unflatten(0, (4, 3)).requires_grad_()
    x_ref = x_cl.detach().contiguous().requires_grad_()
    assert not x_cl.is_contiguous()
    gs = torch.randn(4, 3, 8, 6, 5)
    s, v = F.multi_step(x_cl, spec, Sigmoid(4.0), impl="native")
    s_ref, v_ref = F.multi_step(x_ref, spec, Sigmoid(4.0), impl="reference")
    assert s.stride() == x_cl.stride() and v.stride() == x_cl[0].stride()
    torch.testing.assert_close(s, s_ref, atol=0, rtol=0)
    torch.testing.assert_close(v, v_ref, atol=0, rtol=0)
    (g,) = torch.autograd.grad((s * gs).sum() + v.sum(), x_cl)
    (g_ref,) = torch.autograd.grad((s_ref * gs).sum() + v_ref.sum(), x_ref)
    assert g.stride() == x_cl.stride()
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        s_ng, _ = F.multi_step(x_cl, spec, Sigmoid(4.0))
    assert s_ng.stride() == x_cl.stride()
    torch.testing.assert_close(s_ng, s_ref.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("leaky_k", [False, True])  # PLIF: dL/dk reads V[-1], which the kernel then sets itself
def test_resting_start_and_no_state_equal_an_explicit_initial_membrane(two_threads, dtype, leaky_k):
    # v0=None: the kernel starts every neuron at the resting membrane with no [N] tensor made, read or kept;
    # want_state=False: no final membrane is written. Both must change nothing else, bit for bit.
    torch.manual_seed(13)
    spec = F.NeuronSpec(1.0, 0.0, False, True, True, None if leaky_k else 2.0)
    x0 = (torch.randn(4, 2, 1300) * 1.5 + 0.4).to(dtype)
    gs = torch.randn(4, 2, 1300).to(dtype)
    res = {}
    for mode in ("explicit", "resting", "no-state"):
        x = x0.clone().requires_grad_()
        k = torch.tensor(0.4).requires_grad_() if leaky_k else None
        v0 = torch.zeros(2, 1300) if mode == "explicit" else None
        s, v = F.multi_step(x, spec, Sigmoid(4.0), k, v0, impl="native", want_state=mode != "no-state")
        assert (v is None) == (mode == "no-state")
        loss = (s * gs).float().sum()
        grads = torch.autograd.grad(loss, (x, k) if leaky_k else (x,))
        res[mode] = (s, v) + grads
    for mode in ("resting", "no-state"):
        assert torch.equal(res[mode][0], res["explicit"][0])
        for a, b in zip(res[mode][2:], res["explicit"][2:]):
            assert torch.equal(a, b)
    assert torch.equal(res["resting"][1], res["explicit"][1])
    with torch.no_grad():
        s, v = F.multi_step(x0, spec, Sigmoid(4.0), torch.tensor(0.4) if leaky_k else None, want_state=False)
    assert v is None and torch.equal(s, res["explicit"][0])


def test_node_forward_keeps_no_state_tensor():
    # LIF.forward discards the final membrane, so its autograd node keeps only the layer input
    x = torch.randn(4, 3, 2000).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        LIF(tau=2.0)(x)
    assert len(saved) == 1 and saved[0].shape == x.shape


def test_vector_width_rule_reads_the_vendor(monkeypatch):
    """512-bit vectors (-mprefer-vector-width=512) only on Intel CPUs with AVX512 (kernels/cpu/build.py)."""
    import builtins
    import io

    from spikeformer.kernels.cpu import build

    real_open = builtins.open
    for cap, vendor, want in (("AVX512", "GenuineIntel", True), ("AVX512", "AuthenticAMD", False),
                              ("AVX2", "GenuineIntel", False), ("DEFAULT", "", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda cap=cap: cap)
        text = f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t: fpu\n" if vendor else "processor\t: 0\n"
        monkeypatch.setattr(builtins, "open", lambda path, *a, text=text, **k: io.StringIO(text)
                            if path == "/proc/cpuinfo" else real_open(path, *a, **k))
        assert build.cpu_vendor() == vendor
        assert build._wide_vectors() is want, (cap, vendor)


def test_require_fails_when_the_build_fails(monkeypatch):
    """``make test`` starts with ``build.require()``: a kernel source that does not compile fails the suite instead of
    letting every compiled-kernel test skip."""
    from spikeformer.kernels.cpu import build

    for name, value in (("_tried", False), ("_lib", None), ("_error", None)):
        monkeypatch.setattr(build, name, value)

    def broken():
        raise RuntimeError("c++ failed: neuron.cpp:48: error")

    monkeypatch.setattr(build, "_build", broken)
    monkeypatch.setattr(build, "_compiler", lambda: "/usr/bin/c++")
    with pytest.warns(RuntimeWarning, match="unavailable"):
        with pytest.raises(RuntimeError, match="did not build: RuntimeError: c.. failed: neuron.cpp:48"):
            build.require()
    monkeypatch.setattr(build, "_compiler", lambda: None)  # no compiler: the PyTorch kernels, no failure
    build.require()
