"""The compiled CPU neuron kernel (``neuron_cpu.cpp``): built on first use, loaded with ctypes, optional.

The kernel is plain C++ with a C ABI and no PyTorch headers, so it compiles in about a second with the machine's
C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``) and installs nowhere: the shared library is cached under
``$SPIKEFORMER_CACHE`` (default ``$XDG_CACHE_HOME/spikeformer``, i.e. ``~/.cache/spikeformer``), keyed by the
source, the flags, the compiler and the CPU, and written atomically (a temporary file renamed into place), so
concurrent processes (torchrun ranks, pytest workers) never load a half-written file and a shared home directory
across different CPUs gets one build per CPU.

If no compiler is found or the build fails, one warning is printed and every neuron runs the pure-PyTorch kernel
of ``_kernels.py`` (same spikes, slower). ``SPIKEFORMER_NATIVE=0`` turns the compiled kernel off.

What it runs: the forward of LIF / IF / PLIF (hard or soft reset, any threshold, decay_input either way) on
dense float32 or bfloat16 ``[T, ...]`` input (row-major or channels-last frames), with the Sigmoid or ATan surrogate in backward. The forward
gives the same bits as the PyTorch kernels; gradients agree within fp32 rounding (``tests/test_fast_paths.py``).
It also runs BatchNorm + neuron as one kernel (:class:`NativeBNNeuron`, used by
``spikeformer.layers.fused_bn``) and the stem's max-pool (``spikeformer.layers.pool``).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import Optional

import torch

from .surrogate import ATan, Sigmoid

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "neuron_cpu.cpp")
_BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
_ABI = 8
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
_error: Optional[str] = None


class Params(ctypes.Structure):
    """Mirror of ``SfParams`` in neuron_cpu.cpp."""

    _fields_ = [
        ("T", ctypes.c_int64), ("N", ctypes.c_int64),
        ("charge", ctypes.c_int32), ("hard", ctypes.c_int32), ("detach", ctypes.c_int32),
        ("surrogate", ctypes.c_int32), ("nthreads", ctypes.c_int32), ("vr_zero", ctypes.c_int32),
        ("vth", ctypes.c_float), ("vr", ctypes.c_float), ("tau", ctypes.c_float), ("rate", ctypes.c_float),
        ("alpha", ctypes.c_float), ("keep", ctypes.c_float), ("in_gain", ctypes.c_float),
        ("vinit", ctypes.c_float),
    ]


def _cache_dir() -> str:
    """The kernel cache: ``$SPIKEFORMER_CACHE/kernels`` (default under ``~/.cache/spikeformer``), or a per-user
    folder in the temporary directory when that cannot be written (read-only home on a cluster node)."""
    root = os.environ.get("SPIKEFORMER_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "spikeformer")
    path = os.path.join(root, "kernels")
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"spikeformer-{uid}", "kernels")


def _compiler() -> Optional[str]:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _cpu_signature() -> str:
    sig = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    sig.append(line.strip())
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return "\n".join(sig)


def _try_flags(cxx: str, flags: list[str], workdir: str) -> bool:
    src = os.path.join(workdir, "probe.cpp")
    with open(src, "w") as f:
        f.write("int main() { return 0; }\n")
    r = subprocess.run([cxx, *flags, src, "-o", os.path.join(workdir, "probe")], capture_output=True)
    return r.returncode == 0


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    with open(_SRC, "rb") as f:
        source = f.read()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    cache = _cache_dir()
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        flags = list(_BASE_FLAGS)
        if _try_flags(cxx, ["-march=native"], tmp):  # the build is per CPU (see the cache key), so tune for it
            flags.append("-march=native")
        key = hashlib.sha256(
            b"\0".join([source, " ".join(flags).encode(), "".join(version).encode(), _cpu_signature().encode()])
        ).hexdigest()[:16]
        path = os.path.join(cache, f"neuron_cpu_{key}.so")
        if not os.path.exists(path):
            out = os.path.join(tmp, "neuron_cpu.so")
            r = subprocess.run([cxx, *flags, _SRC, "-o", out], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{os.path.basename(cxx)} failed: {r.stderr.strip()[-2000:]}")
            os.replace(out, path)  # atomic: a concurrent build of the same key writes the same bytes
    lib = ctypes.CDLL(path)
    lib.sf_abi_version.restype = ctypes.c_int
    if lib.sf_abi_version() != _ABI:
        raise RuntimeError(f"{path} has ABI {lib.sf_abi_version()}, expected {_ABI}")
    lib.sf_forward.restype = None
    lib.sf_forward.argtypes = [ctypes.POINTER(Params), ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p]
    lib.sf_backward.restype = ctypes.c_double
    lib.sf_backward.argtypes = [ctypes.POINTER(Params), ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_int]
    lib.sf_maxpool_fwd.restype = None
    lib.sf_maxpool_fwd.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                            ctypes.c_void_p, ctypes.c_int]
    lib.sf_maxpool_bwd.restype = None
    lib.sf_maxpool_bwd.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                            ctypes.c_void_p, ctypes.c_int]
    vp, i64, ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.sf_channel_stats.restype = None
    lib.sf_channel_stats.argtypes = [i64, i64, vp, ci, vp, vp, ci]
    lib.sf_bn_forward.restype = None
    lib.sf_bn_forward.argtypes = [ctypes.POINTER(Params), i64, vp, vp, vp, ci, vp]
    lib.sf_bn_backward.restype = None
    lib.sf_bn_backward.argtypes = [ctypes.POINTER(Params), i64, vp, vp, vp, vp, ci, vp, vp, vp, vp]
    lib.sf_bn_input_grad.restype = None
    lib.sf_bn_input_grad.argtypes = [i64, i64, vp, ci, vp, vp, vp, vp, ci]
    lib.sf_attn_fwd.restype = ci
    lib.sf_attn_fwd.argtypes = [i64, i64, i64, i64, vp, vp, vp, ci, ctypes.c_float, vp, ci]
    lib.sf_attn_bwd.restype = ci
    lib.sf_attn_bwd.argtypes = [i64, i64, i64, i64, vp, vp, vp, ci, ctypes.c_float, vp, vp, vp, vp, ci]
    lib.sf_sparse_rows.restype = i64
    lib.sf_sparse_rows.argtypes = [i64, i64, vp, ci, i64, vp, vp, vp, vp, ci]
    lib.sf_sparse_linear.restype = None
    lib.sf_sparse_linear.argtypes = [i64, i64, vp, vp, vp, vp, vp, vp, vp, ci, ci]
    lib.sf_sparse_linear_wgrad.restype = None
    lib.sf_sparse_linear_wgrad.argtypes = [i64, i64, i64, vp, vp, vp, vp, vp, ci, vp, ci]
    lib.sf_sparse_conv3x3.restype = None
    lib.sf_sparse_conv3x3.argtypes = [i64] * 5 + [vp] * 7 + [ci, ci]
    lib.sf_sparse_conv3x3_wgrad.restype = None
    lib.sf_sparse_conv3x3_wgrad.argtypes = [i64] * 5 + [vp] * 5 + [ci, vp, ci]
    return lib


def enabled() -> bool:
    return os.environ.get("SPIKEFORMER_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, building it on first call; ``None`` when it is off or cannot be built."""
    global _lib, _tried, _error
    if not enabled():
        return None
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            try:
                _lib = _build()
            except Exception as e:  # no compiler, read-only cache, ...: fall back, say so once
                _error = f"{type(e).__name__}: {e}"
                warnings.warn(
                    "spikeformer: the compiled CPU neuron kernel is unavailable, using the slower pure-PyTorch "
                    f"kernel ({_error}). Install a C++ compiler (g++ or clang++) to get it, or set "
                    "SPIKEFORMER_NATIVE=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _tried = True
    return _lib


def build_error() -> Optional[str]:
    """Why the kernel is unavailable (after a failed :func:`library` call), else ``None``."""
    return _error


def supports(x_seq: torch.Tensor, k, v0: Optional[torch.Tensor], spec, surrogate) -> bool:
    """Whether the compiled kernel can run this call (else the caller uses the PyTorch kernel). ``v0=None``: the
    resting membrane, which the kernel sets itself."""
    return (
        x_seq.device.type == "cpu"
        and x_seq.dtype in (torch.float32, torch.bfloat16)
        and x_seq.dim() >= 1
        and x_seq.numel() > 0
        and type(surrogate) in (Sigmoid, ATan)
        and (k is None or (k.numel() == 1 and k.dtype == torch.float32))
        and (v0 is None or (v0.dtype == torch.float32 and v0.device.type == "cpu"))
        and library() is not None
    )


def _pow2(x: float) -> bool:
    """``x`` is a positive power of two (then ``x / tau == x * (1 / tau)`` exactly)."""
    m, _ = math.frexp(x)
    return x > 0 and m == 0.5


def _params(x_seq: torch.Tensor, k: Optional[torch.Tensor], spec, surrogate) -> Params:
    T = x_seq.shape[0]
    N = x_seq.numel() // T
    vr = 0.0 if spec.v_reset is None else float(spec.v_reset)
    kf = None if k is None else float(k.detach().reshape(()).item())
    if not spec.leaky:
        charge, tau, rate = 0, 1.0, 1.0
    elif k is None:
        tau, rate = float(spec.tau), 1.0 / float(spec.tau)
        if _pow2(spec.tau) and spec.decay_input and vr == 0.0:
            charge = 1
        else:
            charge = 2 if spec.decay_input else 4
    else:
        charge, tau, rate = (3 if spec.decay_input else 5), 1.0, kf
    if spec.leaky:
        kk = rate if k is None else kf
        keep, gain = 1.0 - kk, (kk if spec.decay_input else 1.0)
    else:
        keep, gain = 1.0, 1.0
    return Params(
        T=T, N=N, charge=charge, hard=int(spec.v_reset is not None), detach=int(bool(spec.detach_reset)),
        surrogate=1 if type(surrogate) is Sigmoid else 2, nthreads=threads(),
        vr_zero=int(vr == 0.0), vth=float(spec.v_threshold), vr=vr, tau=tau, rate=rate,
        alpha=float(surrogate.alpha), keep=keep, in_gain=gain, vinit=vr if spec.v_reset is not None else 0.0,
    )


def threads() -> int:
    """The OpenMP threads a kernel call uses: PyTorch's intra-op setting."""
    return max(1, torch.get_num_threads())


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when every step ``x[t]`` is one dense block laid out alike (row-major, or channels-last frames
    ``[T, B, C, H, W]`` as the fast convolution stem produces), else a contiguous copy. The kernel works on the
    flat memory, so outputs made with ``torch.empty_like`` (same strides) line up element for element."""
    if x.is_contiguous():
        return x
    if (x.dim() == 5 and x.stride(0) == x[0].numel()
            and x[0].is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _like(t: torch.Tensor, ref: torch.Tensor, dtype=None) -> torch.Tensor:
    """``t`` in ``ref``'s memory layout (and ``dtype``), copying only when needed."""
    dtype = dtype or t.dtype
    if t.dtype == dtype and t.shape == ref.shape and t.stride() == ref.stride():
        return t
    out = torch.empty_like(ref, dtype=dtype)
    out.copy_(t)
    return out


def _v0(v0: Optional[torch.Tensor], x_seq: torch.Tensor) -> Optional[torch.Tensor]:
    # None: every neuron starts at the resting membrane (Params.vinit), set inside the kernel
    return None if v0 is None else _like(v0.detach().expand(x_seq.shape[1:]), x_seq[0], torch.float32)


def _forward(x: torch.Tensor, v0c: Optional[torch.Tensor], p: Params, want_state: bool = True):
    s = torch.empty_like(x)
    v_last = torch.empty_like(x[0], dtype=torch.float32) if want_state else None
    library().sf_forward(ctypes.byref(p), _ptr(x), int(x.dtype == torch.bfloat16), _ptr(s), _ptr(v0c), _ptr(v_last))
    return s, v_last


def forward_no_grad(x_seq, k, v0, spec, surrogate, want_state: bool = True):
    """Spikes and final membrane (``None`` unless ``want_state``) without saving anything for backward."""
    x = _dense(x_seq.detach())
    return _forward(x, _v0(v0, x), _params(x, k, spec, surrogate), want_state)


class NativeMultiStep(torch.autograd.Function):
    """The compiled kernel with autograd. It saves the input ``x`` (and ``v0``), not the membrane: backward
    recomputes ``H`` block by block in cache (bit-identical, a small fraction of the backward's time), so a layer
    keeps ``[T, ...]`` in the input's dtype (2 bytes per site under bf16 autocast instead of 4 for an fp32 ``H``)
    and, since the input is usually a fresh BatchNorm output that nothing else keeps, nothing more. With ``v0=None``
    (the resting membrane) no ``[...]`` state is made, read or kept; with ``want_state=False`` the final membrane is
    not written and ``None`` is returned in its place."""

    @staticmethod
    def forward(ctx, x_seq, k, v0, spec, surrogate, want_state=True):
        x = _dense(x_seq)
        p = _params(x, k, spec, surrogate)
        v0c = _v0(v0, x)
        s, v_last = _forward(x, v0c, p, want_state)
        ctx.save_for_backward(x, v0c)
        ctx.params, ctx.k_shape = p, None if k is None else k.shape
        ctx.v0_shape, ctx.v0_dtype = (None, None) if v0 is None else (v0.shape, v0.dtype)
        return s, v_last

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last):
        x, v0c = ctx.saved_tensors
        p = ctx.params
        p.nthreads = threads()
        if grad_spikes is None:  # only the final membrane is used
            gs = torch.zeros_like(x, dtype=torch.float32)
        else:
            gs = _like(grad_spikes, x, grad_spikes.dtype if grad_spikes.dtype in (torch.float32, torch.bfloat16)
                       else torch.float32)
        gvl = None if grad_v_last is None else _like(grad_v_last, x[0], torch.float32)
        gx = torch.empty_like(x)
        want_v0 = ctx.needs_input_grad[2] and v0c is not None
        want_k = ctx.k_shape is not None and ctx.needs_input_grad[1]
        gv0 = torch.empty_like(x[0], dtype=torch.float32) if want_v0 else None
        total = library().sf_backward(
            ctypes.byref(p), _ptr(x), int(x.dtype == torch.bfloat16), _ptr(v0c), _ptr(gs),
            int(gs.dtype == torch.bfloat16), _ptr(gvl), _ptr(gx), _ptr(gv0), int(want_k),
        )
        grad_k = torch.tensor(total, dtype=torch.float32).reshape(ctx.k_shape) if want_k else None
        if gv0 is not None:
            gv0 = gv0.sum_to_size(ctx.v0_shape).to(ctx.v0_dtype)
        return gx, grad_k, gv0, None, None, None


# ------------------------------------------------------------------------------------------ BatchNorm + neuron
def bn_inference(x: torch.Tensor, C: int, a: torch.Tensor, b: torch.Tensor, spec, surrogate) -> torch.Tensor:
    """Spikes of the neuron driven by ``x * a + b`` (per channel, the innermost dimension of ``x``'s memory):
    BatchNorm with fixed statistics folded into the recursion, nothing saved."""
    p = _params(x, None, spec, surrogate)
    s = torch.empty_like(x)
    library().sf_bn_forward(ctypes.byref(p), C, _ptr(a), _ptr(b), _ptr(x), int(x.dtype == torch.bfloat16), _ptr(s))
    return s


def bn_scale_shift(weight, bias, mean64, invstd64) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm as a per-channel affine map of its input, ``y = x * a + b`` (computed in float64, returned fp32):
    ``a = weight * invstd``, ``b = bias - mean * a``."""
    w = weight.detach().double()
    return (w * invstd64).float(), (bias.detach().double() - mean64 * w * invstd64).float()


def channel_stats(x: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance (float64) of ``x`` whose memory is ``[R, C]``."""
    mean = torch.empty(C, dtype=torch.float64)
    var = torch.empty(C, dtype=torch.float64)
    library().sf_channel_stats(x.numel() // C, C, _ptr(x), int(x.dtype == torch.bfloat16), _ptr(mean), _ptr(var),
                               threads())
    return mean, var


class NativeBNNeuron(torch.autograd.Function):
    """Training-mode BatchNorm (batch statistics) and a neuron in one kernel: ``x`` -> spikes of the neuron driven
    by ``(x - mean) / sqrt(var + eps) * weight + bias``. ``x``'s memory is ``[T, ..., C]`` (channel innermost).
    Saves ``x`` and four ``[C]`` vectors; the normalised input is never stored (forward) and ``dL/dy`` only in
    the buffer that becomes ``dL/dx`` (backward). Running statistics are updated by the caller from the returned
    ``mean`` and ``var``."""

    @staticmethod
    def forward(ctx, x, weight, bias, bias_left_out, C, eps, spec, surrogate):
        # bias_left_out: a bias the producer of x did not add (layers/fused_bn.py: linear_bn_neuron). The batch
        # mean absorbs it, so the output does not depend on it and its gradient is exactly zero.
        mean64, var64 = channel_stats(x, C)
        invstd64 = (var64 + eps).rsqrt()
        a, b = bn_scale_shift(weight, bias, mean64, invstd64)
        p = _params(x, None, spec, surrogate)
        s = torch.empty_like(x)
        library().sf_bn_forward(ctypes.byref(p), C, _ptr(a), _ptr(b), _ptr(x), int(x.dtype == torch.bfloat16),
                                _ptr(s))
        ctx.save_for_backward(x, weight, a, b, mean64, invstd64)
        ctx.params, ctx.C = p, C
        ctx.mark_non_differentiable(mean64, var64)
        return s, mean64, var64

    @staticmethod
    def backward(ctx, grad_spikes, _gm, _gv):
        x, weight, a, b, mean64, invstd64 = ctx.saved_tensors
        p, C = ctx.params, ctx.C
        p.nthreads = threads()
        gs = _like(grad_spikes, x, x.dtype)
        gx = torch.empty_like(x)
        sum_g = torch.empty(C, dtype=torch.float64)
        sum_gxc = torch.empty(C, dtype=torch.float64)
        bf = int(x.dtype == torch.bfloat16)
        mean = mean64.float()
        library().sf_bn_backward(ctypes.byref(p), C, _ptr(a), _ptr(b), _ptr(mean), _ptr(x), bf, _ptr(gs), _ptr(gx),
                                 _ptr(sum_g), _ptr(sum_gxc))
        R = x.numel() // C
        w = weight.detach().double()
        grad_w = sum_gxc * invstd64  # sum dL/dy * xhat
        # dL/dx = w invstd (g - mean(g) - xhat mean(g xhat)) = g A + x B + D
        A = w * invstd64
        B = -A * invstd64 * grad_w / R
        D = -A * sum_g / R - B * mean64
        A, B, D = A.float(), B.float(), D.float()  # kept alive across the call
        library().sf_bn_input_grad(R, C, _ptr(x), bf, _ptr(gx), _ptr(A), _ptr(B), _ptr(D), threads())
        gw = grad_w.to(weight.dtype) if ctx.needs_input_grad[1] else None
        gb = sum_g.to(weight.dtype) if ctx.needs_input_grad[2] else None
        g_left = torch.zeros_like(weight) if ctx.needs_input_grad[3] else None
        return gx, gw, gb, g_left, None, None, None, None


# ------------------------------------------------------------------------------------------------ spike attention
ATTENTION_HEAD_DIMS = (16, 32, 64)  # head dims the compiled attention kernel is built for


class NativeSpikeAttention(torch.autograd.Function):
    """``(Q K^T V) * scale`` per head on tokens ``[..., N, C]`` (head ``h`` = channels ``h*d:(h+1)*d``, ``d`` in
    :data:`ATTENTION_HEAD_DIMS`), fp32 output of the same shape with the heads concatenated as in the input: no head
    transposes. fp32 sums, so 0/1 spikes give exact integers (the values of any association order). Saves Q, K, V;
    backward recomputes K^T V per head."""

    @staticmethod
    def forward(ctx, q, k, v, heads, scale):
        C, N = q.shape[-1], q.shape[-2]
        M = q.numel() // (N * C)
        out = torch.empty(q.shape, dtype=torch.float32)
        if not library().sf_attn_fwd(M, N, C, heads, _ptr(q), _ptr(k), _ptr(v), int(q.dtype == torch.bfloat16),
                                     float(scale), _ptr(out), threads()):
            raise ValueError(f"no compiled attention kernel for head dim {C // heads}")
        ctx.save_for_backward(q, k, v)
        ctx.dims, ctx.scale = (M, N, C, heads), float(scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        go = grad_out.to(torch.float32).contiguous()
        gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        library().sf_attn_bwd(*ctx.dims, _ptr(q), _ptr(k), _ptr(v), int(q.dtype == torch.bfloat16), ctx.scale,
                              _ptr(go), _ptr(gq), _ptr(gk), _ptr(gv), threads())
        return gq, gk, gv, None, None


# ------------------------------------------------------------------------------------------ linear layers on spikes
def sparse_rows(x2d: torch.Tensor, max_density: float) -> Optional[tuple[torch.Tensor, ...]]:
    """The nonzeros of ``x2d`` ``[R, K]`` (contiguous fp32 or bf16) row by row: ``(rs, re, col, val)``, row ``r``'s
    entries being ``col[rs[r]:re[r]]`` (int32 column) and ``val[...]`` (fp32 value). ``None`` when more than about
    ``max_density`` of the entries are nonzero (then a dense product is faster)."""
    R, K = x2d.shape
    cap = max(int(max_density * R * K), 1)
    rs = torch.empty(R, dtype=torch.int64)
    re = torch.empty(R, dtype=torch.int64)
    col = torch.empty(cap, dtype=torch.int32)
    val = torch.empty(cap, dtype=torch.float32)
    n = library().sf_sparse_rows(R, K, _ptr(x2d), int(x2d.dtype == torch.bfloat16), cap, _ptr(rs), _ptr(re),
                                 _ptr(col), _ptr(val), threads())
    return None if n < 0 else (rs, re, col, val)


def _compute_weights(weight, bias, dtype):
    """The weight in the compute dtype (what autocast's GEMM would see) and the bias rounded to it, as fp32."""
    b = None if bias is None else bias.detach().to(dtype).float().contiguous()
    return weight.detach().to(dtype), b


class NativeSparseLinear(torch.autograd.Function):
    """``x @ weight^T + bias`` for ``x [R, K]`` given as its nonzeros (:func:`sparse_rows`): the products skip the
    zeros. ``weight`` and ``bias`` are fp32 parameters; ``dtype`` is the compute dtype (bf16 under autocast: weight
    and bias are rounded to it first, as autocast's GEMM sees them, and the output is rounded to it). Sums are fp32
    and start from the bias, so for spikes the output differs from a dense GEMM's only by the order of the sums.
    Backward: ``dL/dx = g @ weight`` dense (BLAS, in ``dtype``), ``dL/dW = g^T x`` over the nonzeros and
    ``dL/db = sum g``, both fp32. Saves the nonzeros, not ``x``."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, rows, dtype):
        R, Nout = x2d.shape[0], weight.shape[0]
        w, b = _compute_weights(weight, bias, dtype)
        wt = w.t().contiguous()  # [K, Nout], in dtype
        out = torch.empty(R, Nout, dtype=dtype)
        library().sf_sparse_linear(R, Nout, *(_ptr(t) for t in rows), _ptr(wt), None if b is None else _ptr(b),
                                   _ptr(out), int(dtype == torch.bfloat16), threads())
        ctx.rows, ctx.shape, ctx.dtype, ctx.has_bias = rows, x2d.shape, dtype, bias is not None
        ctx.save_for_backward(w)
        return out

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        g = g.to(ctx.dtype).contiguous()
        gx = g.mm(w) if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1]:
            R, K = ctx.shape
            gw = torch.empty(w.shape[0], K, dtype=torch.float32)
            library().sf_sparse_linear_wgrad(R, K, w.shape[0], *(_ptr(t) for t in ctx.rows), _ptr(g),
                                             int(g.dtype == torch.bfloat16), _ptr(gw), threads())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0, dtype=torch.float32)
        return gx, gw, gb, None, None


class NativeSparseConv3x3(torch.autograd.Function):
    """A 3x3 convolution, stride 1, padding 1, no groups, of channels-last frames ``x [M, Cin, H, W]`` given as
    their pixels' nonzeros (:func:`sparse_rows` of the ``[M * H * W, Cin]`` view); output channels-last
    ``[M, Cout, H, W]`` in ``dtype``. As :class:`NativeSparseLinear`: weight (and bias) rounded to ``dtype``, fp32
    sums; backward: ``dL/dx`` dense (oneDNN's convolution data gradient, in ``dtype``), ``dL/dW`` over the nonzeros
    in fp32. Saves the nonzeros, not ``x``."""

    @staticmethod
    def forward(ctx, x, weight, bias, rows, dtype):
        M, Cin, H, W = x.shape
        Cout = weight.shape[0]
        w, b = _compute_weights(weight, bias, dtype)
        wt = w.permute(2, 3, 1, 0).contiguous()  # [3, 3, Cin, Cout], in dtype
        out = torch.empty((M, Cout, H, W), dtype=dtype, memory_format=torch.channels_last)
        library().sf_sparse_conv3x3(M, H, W, Cin, Cout, *(_ptr(t) for t in rows), _ptr(wt),
                                    None if b is None else _ptr(b), _ptr(out), int(dtype == torch.bfloat16),
                                    threads())
        ctx.rows, ctx.shape, ctx.dtype, ctx.has_bias = rows, x.shape, dtype, bias is not None
        ctx.save_for_backward(w)
        return out

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        M, Cin, H, W = ctx.shape
        Cout = w.shape[0]
        g = g.to(ctx.dtype).contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # the input only gives its shape and layout to the data-gradient convolution (never read)
            like = torch.empty(ctx.shape, dtype=ctx.dtype, memory_format=torch.channels_last)
            gx = torch.ops.aten.convolution_backward(g, like, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                     [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = torch.empty(Cout, Cin, 3, 3, dtype=torch.float32)
            library().sf_sparse_conv3x3_wgrad(M, H, W, Cin, Cout, *(_ptr(t) for t in ctx.rows), _ptr(g),
                                              int(g.dtype == torch.bfloat16), _ptr(gw), threads())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3), dtype=torch.float32)
        return gx, gw, gb, None, None

