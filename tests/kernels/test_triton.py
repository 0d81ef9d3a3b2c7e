"""The Triton kernels (``spikeformer/kernels/triton``) on CPU tensors under Triton's interpreter, against the PyTorch
reference: spikes and final membranes bit for bit, gradients within rounding; and the dispatch that picks them for
CUDA tensors. No GPU is needed (nor used: nothing here says anything about GPU speed).

Triton fixes at ``import triton`` whether jitted functions run compiled or interpreted (``TRITON_INTERPRET=1``), and
a test run may have imported it already (torch does for ``torch.compile``). So unless this process imported Triton
under the interpreter, the tests below are not collected here: ``test_kernels_under_the_interpreter`` runs this file
in a child process with ``TRITON_INTERPRET=1`` and fails if any of them fails there.
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="Triton is not installed (it comes with the CUDA builds of torch): the Triton "
                                     "kernels cannot be tested")

from spikeformer import kernels  # noqa: E402
from spikeformer.neurons import LIF, ATan, Rectangle, Sigmoid  # noqa: E402
from spikeformer.neurons import functional as NF  # noqa: E402
from spikeformer.neurons.integer import IntegerLIF  # noqa: E402

TK = pytest.importorskip("spikeformer.kernels.triton")  # noqa: E402  (needs triton)


def _interpreted_here() -> bool:
    """Triton was imported under its interpreter in this process (its own jitted functions are interpreted)."""
    import triton.language as tl

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return TK.interpreting() and isinstance(tl.zeros, InterpretedFunction)


IN_PROCESS = _interpreted_here()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SURROGATES = {"sigmoid": lambda: Sigmoid(4.0), "atan": lambda: ATan(2.0), "rect": lambda: Rectangle(1.0)}


def _close_low(a: torch.Tensor, b: torch.Tensor, dt: torch.dtype) -> bool:
    """At most one rounding step of ``dt`` apart (fp32: a few ulp)."""
    a, b = a.float(), b.float()
    rel = {torch.float32: 2 ** -20, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}[dt]
    return bool(((a - b).abs() <= b.abs() * rel + 1e-6 * (dt == torch.float32) + 1e-30).all())


# ------------------------------------------------------------------------------------------------------ neuron
NEURONS = {"lif": (True, 2.0), "lif-tau1.7": (True, 1.7), "if": (False, None), "plif": (True, None)}
RESETS = {"hard": 0.0, "hard-0.3": -0.3, "soft": None}
# every (neuron, reset, detach, decay) once; surrogate and dtype rotate so each meets every neuron and reset
_COMBOS = [(kind, reset, detach, decay) for kind in NEURONS for reset in RESETS for detach in (False, True)
           for decay in ((True, False) if kind != "if" else (True,))]
NEURON_CASES = [c + (list(SURROGATES)[i % 3], list(DTYPES)[(i // 3 + i) % 3]) for i, c in enumerate(_COMBOS)]


def test_neuron_cases_cover_every_surrogate_and_dtype_per_neuron():
    for kind in NEURONS:
        cases = [c for c in NEURON_CASES if c[0] == kind]
        assert {c[4] for c in cases} == set(SURROGATES) and {c[5] for c in cases} == set(DTYPES)


@pytest.mark.parametrize("kind,reset,detach,decay,sur,dtype", NEURON_CASES)
def test_neuron(kind, reset, detach, decay, sur, dtype, monkeypatch):
    seed = NEURON_CASES.index((kind, reset, detach, decay, sur, dtype))
    torch.manual_seed(seed)
    leaky, tau = NEURONS[kind]
    spec = NF.NeuronSpec(0.8, RESETS[reset], detach, decay, leaky, tau)
    surrogate = SURROGATES[sur]()
    dt = DTYPES[dtype]
    x0 = (torch.randn(5, 3, 70) * 1.5 + 0.4).to(dt)
    v00 = torch.randn(3, 70) * 0.3
    gs, gv = torch.randn(5, 3, 70).to(dt), torch.randn(3, 70)
    launches = []
    real_launch = TK.neuron.launch_forward
    monkeypatch.setattr(TK.neuron, "launch_forward",
                        lambda *a, **kw: launches.append(kw.get("want_h", False)) or real_launch(*a, **kw))
    res = {}
    for impl in ("reference", "triton"):
        x, v0 = x0.clone().requires_grad_(), v00.clone().requires_grad_()
        k = torch.tensor(0.35).requires_grad_() if kind == "plif" else None
        if impl == "reference":
            s, v = NF.multi_step(x, spec, surrogate, k, v0, impl="reference")
        else:
            s, v = TK.neuron.neuron(x, k, v0, spec, surrogate)
            assert launches == [False]  # forward writes no membrane history, with or without autograd
        leaves = [x, v0] + ([k] if k is not None else [])
        grads = torch.autograd.grad((s * gs).float().sum() + (v * gv).sum(), leaves)
        res[impl] = (s, v, grads)
    assert launches == [False, True]  # backward recomputes H
    (s_ref, v_ref, g_ref), (s, v, g) = res["reference"], res["triton"]
    assert 0.05 < s_ref.float().mean().item() < 0.95
    assert s.dtype == dt and v.dtype == torch.float32 and g[0].dtype == dt
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    assert _close_low(g[0], g_ref[0], dt)
    torch.testing.assert_close(g[1], g_ref[1], atol=1e-5, rtol=1e-5)  # dL/dv0 (fp32 state)
    if kind == "plif":
        torch.testing.assert_close(g[2], g_ref[2], atol=1e-4, rtol=1e-4)  # dL/dk, a sum over every site

    # without gradients: the forward alone, no autograd node, no history; the resting membrane when v0 is None
    launches.clear()
    with torch.no_grad():
        k = torch.tensor(0.35) if kind == "plif" else None
        s_ng, v_ng = TK.neuron.neuron(x0, k, v00, spec, surrogate)
        s_rest, v_none = TK.neuron.neuron(x0, k, None, spec, surrogate, want_state=False)
        s_rest_ref, _ = NF.multi_step(x0, spec, surrogate, k, impl="reference")
    assert launches == [False, False]
    assert s_ng.grad_fn is None and torch.equal(s_ng, s_ref) and torch.equal(v_ng, v_ref)
    assert v_none is None and torch.equal(s_rest, s_rest_ref)


def test_neuron_gradient_of_the_membrane_alone_and_broadcast_v0():
    # only the final membrane is used (no gradient reaches the spikes), and v0 broadcast over the batch
    spec = NF.NeuronSpec(1.0, None, False, True, True, 2.0)
    x0 = torch.randn(4, 2, 33, generator=_gen(3)) + 0.6
    v00 = torch.randn(33, generator=_gen(4)) * 0.2
    out = []
    for fn in (lambda x, v0: NF.multi_step(x, spec, ATan(), None, v0, impl="reference"),
               lambda x, v0: TK.neuron.neuron(x, None, v0, spec, ATan())):
        x, v0 = x0.clone().requires_grad_(), v00.clone().requires_grad_()
        s, v = fn(x, v0)
        out.append((s, v, torch.autograd.grad(v.sum(), (x, v0))))
    (s_ref, v_ref, g_ref), (s, v, g) = out
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref) and g[1].shape == (33,)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)


def test_neuron_channels_last_frames_keep_their_layout():
    spec = NF.NeuronSpec(1.0, 0.0, True, True, True, 2.0)
    frames = (torch.randn(3 * 2, 8, 5, 4, generator=_gen(5)) + 0.7).contiguous(memory_format=torch.channels_last)
    x = frames.unflatten(0, (3, 2))
    s, _ = TK.neuron.neuron(x, None, None, spec, Sigmoid())
    s_ref, _ = NF.multi_step(x.contiguous(), spec, Sigmoid(), impl="reference")
    assert s.stride() == x.stride() and torch.equal(s, s_ref)


def test_neuron_hands_other_calls_to_the_reference(monkeypatch):
    class Sharper(Sigmoid):  # a user's surrogate: no built-in gradient for it
        def grad(self, x):
            return super().grad(x) * 2.0

    calls = []
    monkeypatch.setattr(TK.neuron, "neuron_op", lambda *a: calls.append(a) or pytest.fail("not a Triton call"))
    spec = NF.NeuronSpec(1.0, 0.0, False, True, True, 2.0)
    x = torch.randn(4, 50, dtype=torch.float64, generator=_gen(6)) + 0.6
    for sur, xx in ((Sharper(), x.float()), (Sigmoid(), x)):  # another surrogate; float64
        xx = xx.detach().requires_grad_()
        s, v = TK.neuron.neuron(xx, None, None, spec, sur)
        s_ref, v_ref = NF.multi_step(xx, spec, sur, impl="reference")
        (g,), (g_ref,) = torch.autograd.grad(s.sum(), xx), torch.autograd.grad(s_ref.sum(), xx)
        assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
        # the PyTorch kernel's BPTT and the functional reference's evaluate the user's surrogate in other orders:
        # an ulp apart in float32 on some CPUs (5 of 200 here), so the gradient is compared to a few ulps
        tol = 4 * torch.finfo(xx.dtype).eps
        torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol * g_ref.abs().max().item())
        assert (g != 0).sum() > 100  # the surrogate's gradient reached the input
    assert calls == []


# ----------------------------------------------------------------------------------------- BatchNorm + neuron
BN_NEURONS = {  # name: (spec, surrogate)
    "lif": (NF.NeuronSpec(1.0, 0.0, True, True, True, 2.0), Sigmoid()),
    "lif-soft-nodecay": (NF.NeuronSpec(1.0, None, False, False, True, 3.0), ATan()),
    "if-rect": (NF.NeuronSpec(0.5, 0.0, False, True, False, None), Rectangle(1.0)),
}
BN_CASES = [(n, layout, dtype) for (n, layout), dtype in
            zip(itertools.product(BN_NEURONS, ("tokens", "frames")), itertools.cycle(DTYPES))]


def _bn_input(layout: str, dt, seed: int):
    g = _gen(seed)
    if layout == "tokens":
        return (torch.randn(4, 6, 20, 24, generator=g) * 1.5 + 0.3).to(dt)
    frames = (torch.randn(3 * 4, 16, 9, 7, generator=g) * 1.5 + 0.3).contiguous(memory_format=torch.channels_last)
    return frames.unflatten(0, (3, 4)).to(dt).permute(0, 1, 3, 4, 2)  # channel-last view, contiguous


def _bn_params(C: int):
    g = _gen(2)
    return (torch.rand(C, generator=g) + 0.5, torch.rand(C, generator=g) * 0.6 - 0.3,
            torch.rand(C, generator=g) - 0.5, torch.rand(C, generator=g) + 0.5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("neuron,layout,dtype", BN_CASES)
def test_bn_neuron(training, neuron, layout, dtype):
    dt = DTYPES[dtype]
    spec, sur = BN_NEURONS[neuron]
    x0 = _bn_input(layout, dt, 1)
    C = x0.shape[-1]
    assert x0.is_contiguous()
    weight0, bias0, rmean, rvar = _bn_params(C)
    grad = torch.randn(x0.shape, generator=_gen(3)).to(dt)
    eps = 1e-5
    res = {}
    for impl in ("reference", "triton"):
        x, w, b = (t.detach().clone().requires_grad_(training) for t in (x0, weight0, bias0))
        with torch.set_grad_enabled(training):
            if impl == "reference":  # BatchNorm, then the step-by-step neuron
                y = F.batch_norm(x.reshape(-1, C), None if training else rmean, None if training else rvar, w, b,
                                 training, 0.0, eps).view(x.shape)
                s, _ = NF.multi_step(y, spec, sur, impl="reference")
                var, mean = torch.var_mean(x.detach().reshape(-1, C).double(), 0, correction=0)
            else:
                s, mean, var = TK.bn_neuron.bn_neuron(x, w, b, rmean, rvar, eps, training, spec, sur)
        grads = torch.autograd.grad((s.float() * grad.float()).sum(), (x, w, b)) if training else ()
        res[impl] = (s.detach(), mean, var, grads)
    (s_ref, m_ref, v_ref, g_ref), (s, m, v, gr) = res["reference"], res["triton"]
    assert s.dtype == dt and s.shape == s_ref.shape
    assert s_ref.float().mean().item() > 0.02  # the neurons do fire
    # the statistics are summed in another order: a spike sitting on the threshold may flip, rarely
    assert (s != s_ref).float().mean().item() < 1e-3
    # bit for bit against the reference neuron driven by the kernel's own normalisation x * a + b (rounded to dt)
    stats = (m, v) if training else (rmean.double(), rvar.double())
    a, b = TK.bn_neuron.scale_shift(weight0, bias0, stats[0], (stats[1] + eps).rsqrt())
    s_own, _ = NF.multi_step((x0.float() * a + b).to(dt), spec, sur, impl="reference")
    assert torch.equal(s, s_own)
    if not training:
        assert m is None and v is None
        return
    torch.testing.assert_close(m, m_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-9)
    agree = (s == s_ref).flatten(1).all(0)  # neurons whose spikes agree at every step
    gx, gx_ref = gr[0].float().flatten(1)[:, agree], g_ref[0].float().flatten(1)[:, agree]
    assert gr[0].dtype == dt
    tol = 1e-5 if dt == torch.float32 else 3e-2
    assert (gx - gx_ref).abs().max().item() <= tol * gx_ref.abs().max().item()
    for t, r in zip(gr[1:], g_ref[1:]):  # weight, bias
        assert (t - r).abs().max().item() <= (1e-5 if dt == torch.float32 else 2e-2) * r.abs().max().item()


def test_bn_neuron_bias_left_out():
    spec, sur = BN_NEURONS["lif"]
    x0 = _bn_input("tokens", torch.float32, 7)
    C = x0.shape[-1]
    weight, bias, rmean, rvar = _bn_params(C)
    left = torch.randn(C, generator=_gen(8)) * 0.2
    # training: the batch mean absorbs the bias, so the spikes are the same and its gradient is zero
    x, lo = x0.clone().requires_grad_(), left.clone().requires_grad_()
    s, mean, _ = TK.bn_neuron.bn_neuron(x, weight, bias, rmean, rvar, 1e-5, True, spec, sur, lo)
    s_plain, mean_plain, _ = TK.bn_neuron.bn_neuron(x0, weight, bias, rmean, rvar, 1e-5, True, spec, sur)
    assert torch.equal(s, s_plain) and torch.equal(mean, mean_plain)
    (g_lo,) = torch.autograd.grad(s.sum(), lo)
    assert torch.equal(g_lo, torch.zeros(C))
    # eval: BatchNorm of x + bias
    with torch.no_grad():
        s_eval, _, _ = TK.bn_neuron.bn_neuron(x0, weight, bias, rmean, rvar, 1e-5, False, spec, sur, left)
        s_ref, _, _ = kernels.torch.bn_neuron.bn_neuron(x0, weight, bias, rmean, rvar, 1e-5, False, spec, sur, left)
    assert (s_eval != s_ref).float().mean().item() < 1e-3 and s_ref.float().mean().item() > 0.02


def test_bn_neuron_hands_other_calls_to_the_reference(monkeypatch):
    monkeypatch.setattr(TK.bn_neuron, "bn_neuron_op", lambda *a: pytest.fail("not a Triton call"))
    monkeypatch.setattr(TK.bn_neuron, "bn_neuron_eval_op", lambda *a: pytest.fail("not a Triton call"))
    spec, sur = BN_NEURONS["lif"]
    x0 = _bn_input("tokens", torch.float32, 9)
    weight, bias, rmean, rvar = _bn_params(x0.shape[-1])
    plif = NF.NeuronSpec(1.0, 0.0, False, True, True, None)
    with pytest.raises(ValueError, match="PLIF"):
        TK.bn_neuron.bn_neuron(x0, weight, bias, rmean, rvar, 1e-5, True, plif, sur)
    x = x0.clone().requires_grad_()  # eval-mode statistics with a gradient: unfused
    s, m, v = TK.bn_neuron.bn_neuron(x, weight, bias, rmean, rvar, 1e-5, False, spec, sur)
    s_ref, _, _ = kernels.torch.bn_neuron.bn_neuron(x0, weight, bias, rmean, rvar, 1e-5, False, spec, sur)
    assert torch.equal(s, s_ref) and m is None and s.requires_grad


# --------------------------------------------------------------------------------------------------- attention
ATTN_CASES = [(2, 2, 17, 64, 4), (1, 2, 40, 64, 2), (1, 1, 9, 128, 2), (2, 1, 5, 48, 2), (1, 2, 33, 24, 3)]


def _spikes(shape, p, seed, dtype=torch.float32):
    return (torch.rand(shape, generator=_gen(seed)) < p).to(dtype)


def _attention_reference(q, k, v, heads, scale):
    """Per head, in float64: ``(Q K^T) V * scale``."""
    *lead, N, C = q.shape
    d = C // heads
    out = torch.empty(*lead, N, C, dtype=torch.float64)
    for h in range(heads):
        qh, kh, vh = (t[..., h * d:(h + 1) * d].double() for t in (q, k, v))
        out[..., h * d:(h + 1) * d] = (qh @ kh.transpose(-2, -1)) @ vh * scale
    return out


@pytest.mark.parametrize("shape,dtype", list(zip(ATTN_CASES, itertools.cycle(DTYPES))),
                         ids=lambda s: f"N{s[2]}-C{s[3]}-h{s[4]}" if isinstance(s, tuple) else s)
def test_attention(shape, dtype):
    T, B, N, C, H = shape
    dt = DTYPES[dtype]
    q0, k0, v0 = (_spikes((T, B, N, C), 0.4, s, dt) for s in range(3))
    go = _spikes((T, B, N, C), 0.5, 9)  # 0/1 upstream gradient: every gradient is an exact integer / 8
    leaves = [t.clone().requires_grad_() for t in (q0, k0, v0)]
    out = TK.attention.attention(*leaves, H, 0.125)
    grads = torch.autograd.grad((out * go).sum(), leaves)
    ref_leaves = [t.double().requires_grad_() for t in (q0, k0, v0)]
    ref = _attention_reference(*ref_leaves, H, 0.125)
    ref_grads = torch.autograd.grad((ref * go.double()).sum(), ref_leaves)
    assert out.dtype == torch.float32 and out.shape == q0.shape
    assert torch.equal(out, ref.float())
    assert torch.equal(out, kernels.torch.attention.attention(q0, k0, v0, H, 0.125))
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dt and torch.equal(g, r.to(dt))


def test_attention_gradients_of_real_valued_upstream():
    q0, k0, v0 = (_spikes((2, 12, 32), 0.3, s) for s in range(3))
    go = torch.randn(2, 12, 32, generator=_gen(4))
    out = []
    for fn in (TK.attention.attention, kernels.torch.attention.attention):
        leaves = [t.clone().requires_grad_() for t in (q0, k0, v0)]
        out.append(torch.autograd.grad((fn(*leaves, 2, 0.25) * go).sum(), leaves))
    for a, r in zip(*out):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ integer neuron
@pytest.mark.parametrize("decay,vth,dtype", [(0.25, 1.0, "fp32"), (0.25, 0.7, "bf16"), (None, 1.0, "fp16"),
                                             (1 - 1 / (4 / 3), 1.3, "fp32")])
def test_integer_neuron(decay, vth, dtype):
    dt = DTYPES[dtype]
    x0 = (torch.randn(6, 3, 40, generator=_gen(10)) * 2.0 + 1.0).to(dt)
    go = torch.randn(6, 3, 40, generator=_gen(11)).to(dt)
    res = []
    for fn in (lambda x: IntegerLIF(D=4, decay=decay, v_threshold=vth).counts(x),
               lambda x: TK.integer.integer_counts(x, 4, decay, vth)):
        x = x0.clone().requires_grad_()
        c = fn(x)
        res.append((c, torch.autograd.grad((c * go).sum(), x)[0]))
    (c_ref, g_ref), (c, g) = res
    assert c.dtype == dt and torch.equal(c, c_ref)
    assert len(c.unique()) == 5  # every count 0..D occurs
    assert g.dtype == dt
    if dt == torch.float32:
        torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-6)
    else:  # the module rounds every step of the backward chain to bf16/fp16, the kernel sums in fp32
        assert (g - g_ref).abs().max().item() <= 2 ** -6 * g_ref.abs().max().item()


# ---------------------------------------------------------------------------------------- custom ops, dispatch
def _neuron_args(k=None):
    x = torch.randn(3, 2, 20, generator=_gen(12)) + 0.5
    cfg = TK.neuron.make_cfg(kernels.NeuronParams.from_spec(NF.NeuronSpec(), Sigmoid()), x.dtype)
    return (x.requires_grad_(), k, torch.zeros(2, 20).requires_grad_(), *cfg, True)


@pytest.mark.parametrize("name", ["neuron", "neuron-plif", "bn_neuron", "attention", "integer"])
def test_custom_ops_pass_opcheck(name):
    # schema, fake tensors (torch.compile), autograd registration, AOT dispatch
    if name.startswith("neuron"):
        op, args = TK.neuron.neuron_op, _neuron_args(torch.tensor(0.4).requires_grad_() if "plif" in name else None)
    elif name == "bn_neuron":
        x = _bn_input("tokens", torch.float32, 13)[:2].requires_grad_()
        w, b, _, _ = _bn_params(x.shape[-1])
        cfg = TK.neuron.make_cfg(kernels.NeuronParams.from_spec(*BN_NEURONS["lif"]), x.dtype)
        op, args = TK.bn_neuron.bn_neuron_op, (x, w.requires_grad_(), b.requires_grad_(), None, 1e-5, *cfg)
    elif name == "attention":
        op, args = TK.attention.attention_op, tuple(_spikes((2, 9, 32), 0.4, s).requires_grad_() for s in range(3))
        args += (2, 0.125)
    else:
        op, args = TK.integer.integer_op, ((torch.randn(4, 30, generator=_gen(14)) + 1).requires_grad_(), 4, 0.25,
                                           True, 1.0)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                "test_aot_dispatch_dynamic"))


def test_dispatch_picks_triton_for_cuda_and_the_cpu_kernels_for_cpu(monkeypatch):
    # a machine with a GPU: importing the package registers the kernels for "cuda"
    TK.unregister_kernels("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        importlib.reload(TK)
        cuda_tensor = types.SimpleNamespace(device=torch.device("cuda", 0))  # what select reads of a tensor
        for op, fn in TK.KERNELS.items():
            for where in (cuda_tensor, torch.device("cuda"), "cuda:1"):
                assert kernels.select(op, where) is fn
            assert kernels.select(op, torch.zeros(1)) is kernels.builtin(op, torch.zeros(1))
            assert kernels.builtin_backend(op, torch.zeros(1)).name in ("cpu", "torch")
        assert TK.neuron.neuron is kernels.select(kernels.NEURON, cuda_tensor)
    finally:
        TK.unregister_kernels("cuda")
    for op in TK.KERNELS:
        assert kernels.registered(op, "cuda") is None
    assert not TK.runs_on(torch.device("cuda"))  # under the interpreter a CUDA call goes to the reference


def test_registered_for_cpu_the_layers_run_the_triton_kernel(monkeypatch):
    calls = []
    real = TK.neuron.neuron_op
    monkeypatch.setattr(TK.neuron, "neuron_op", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(4, 2, 16, generator=_gen(15)) + 0.5
    s_cpu = LIF()(x)
    TK.register_kernels("cpu")
    try:
        assert kernels.select(kernels.NEURON, x) is TK.neuron.neuron
        s = LIF()(x)
    finally:
        TK.unregister_kernels("cpu")
    assert calls == [(4, 2, 16)] and torch.equal(s, s_cpu)
    assert kernels.select(kernels.NEURON, x) is kernels.builtin(kernels.NEURON, x)


if not IN_PROCESS:
    # the kernels cannot run in this process: every test above runs in the child process instead
    for _name in [n for n in globals() if n.startswith("test_")]:
        del globals()[_name]

    @pytest.mark.slow
    def test_kernels_under_the_interpreter():
        env = dict(os.environ, TRITON_INTERPRET="1")
        root = Path(__file__).resolve().parents[2]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", __file__],
                              cwd=root, env=env, capture_output=True, text=True, timeout=600)
        lines = proc.stdout.strip().splitlines()
        summary = lines[-1] if lines else ""
        print(summary)
        assert proc.returncode == 0, "\n".join(lines[-60:]) + proc.stderr[-3000:]
        assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
