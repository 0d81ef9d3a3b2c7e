"""Building and loading the compiled CPU kernels: every ``*.cpp`` of this folder, one shared library, optional.

The kernels are plain C++ with a C ABI and no PyTorch headers, so they compile with the machine's C++ compiler
(``$CXX``, else ``c++``/``g++``/``clang++``) on first use and install nowhere: each source becomes an object in
its own compiler process (the sources build side by side on several cores), the objects are linked into one
library, and the library is cached under ``$SPIKEFORMER_CACHE`` (default ``$XDG_CACHE_HOME/spikeformer``, i.e.
``~/.cache/spikeformer``). The cache key covers every source and header, the flags, the compiler and the CPU, and
the library is written atomically (a temporary file renamed into place), so concurrent processes (torchrun ranks,
pytest workers) never load a half-written file and a shared home directory across different CPUs gets one build
per CPU.

If no compiler is found or the build fails, one warning is printed and every operation runs its PyTorch
implementation (``spikeformer/kernels/torch``: the same results, slower). ``SPIKEFORMER_NATIVE=0`` turns the
compiled kernels off.

Each binding module (``neuron.py``, ``bn_neuron.py``, ...) declares the C signatures it calls with
:func:`declare`; they are applied to the library when it is loaded.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import Optional, Sequence

import torch

_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCES = tuple(sorted(glob.glob(os.path.join(_DIR, "*.cpp"))))
_HEADERS = tuple(sorted(glob.glob(os.path.join(_DIR, "*.h"))))
_COMPILE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
_LINK_FLAGS = ["-shared", "-fopenmp"]
_ABI = 8  # sf_abi_version() of the sources; a library reporting another one is refused
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
_error: Optional[str] = None
_signatures: dict[str, tuple] = {}


def declare(**signatures: tuple) -> None:
    """Record ``name=(restype, argtypes)`` for functions of the library; applied when it loads (at once if it is
    loaded already)."""
    _signatures.update(signatures)
    if _lib is not None:
        _apply(_lib, signatures)


def _apply(lib: ctypes.CDLL, signatures: dict[str, tuple]) -> None:
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, list(argtypes)


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


def cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo (``"vendor_id"``, ``"model name"``), or ``""`` where there is
    none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``), or ``""`` where /proc/cpuinfo has none."""
    return cpuinfo("vendor_id")


def _wide_vectors() -> bool:
    """Whether the loops are vectorised with 512-bit registers (``-mprefer-vector-width=512``): on Intel CPUs with
    AVX512, where GCC's tuning otherwise keeps them at 256 bits. Measured on an Intel Xeon with AMX (2 cores,
    ``benchmarks/RESULTS.md``): the BatchNorm + neuron kernels of a Spikformer step 1.16x faster in bf16 and 1.13x
    in fp32, the whole training step 1.09x in bf16 and 1.02x in fp32. Not measured on AMD's AVX512 CPUs, which keep
    the default. Most kernels sum per lane, in the same order at either width; the one float sum reduced across lanes
    (the attention backward's dot products over few tokens, ``attention.cpp`` ``row_dots``) adds in another order.
    Checked on one forward and backward of three families at batch 4, T=2: outputs and every gradient bit-identical
    for Spikformer and SDT (fp32, bf16) and QKFormer in bf16; QKFormer's fp32 gradients moved by at most 2e-6 of
    their size. A machine always builds the same way, so runs on it stay reproducible."""
    return cpu_vendor() == "GenuineIntel" and "AVX512" in torch.backends.cpu.get_cpu_capability()


def _try_flags(cxx: str, flags: list[str], workdir: str) -> bool:
    src = os.path.join(workdir, "probe.cpp")
    with open(src, "w") as f:
        f.write("int main() { return 0; }\n")
    r = subprocess.run([cxx, *flags, src, "-o", os.path.join(workdir, "probe")], capture_output=True)
    return r.returncode == 0


def _cache_key(files: Sequence[str], flags: list[str], version: str) -> str:
    h = hashlib.sha256()
    for path in files:  # names too: a renamed source is another build
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read() + b"\0")
    h.update(" ".join(flags).encode() + b"\0" + version.encode() + b"\0" + _cpu_signature().encode())
    return h.hexdigest()[:16]


def _compile(cxx: str, flags: list[str], workdir: str) -> str:
    """Every source to an object, in parallel compiler processes, then one link; returns the library's path."""
    procs = []
    for src in _SOURCES:
        obj = os.path.join(workdir, os.path.basename(src)[:-4] + ".o")
        procs.append((obj, subprocess.Popen([cxx, *flags, "-c", src, "-o", obj], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)))
    errors = []
    for _, p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err.strip())
    if not errors:
        out = os.path.join(workdir, "kernels_cpu.so")
        r = subprocess.run([cxx, *[o for o, _ in procs], *_LINK_FLAGS, *flags, "-o", out], capture_output=True,
                           text=True)
        if r.returncode == 0:
            return out
        errors.append(r.stderr.strip())
    raise RuntimeError(f"{os.path.basename(cxx)} failed: {chr(10).join(errors)[-2000:]}")


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    version = "".join(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1])
    cache = _cache_dir()
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        flags = list(_COMPILE_FLAGS)
        if _try_flags(cxx, ["-march=native"], tmp):  # the build is per CPU (see the cache key), so tune for it
            flags.append("-march=native")
            if _wide_vectors() and _try_flags(cxx, ["-march=native", "-mprefer-vector-width=512"], tmp):
                flags.append("-mprefer-vector-width=512")
        path = os.path.join(cache, f"kernels_cpu_{_cache_key(_SOURCES + _HEADERS, flags, version)}.so")
        if not os.path.exists(path):
            # atomic: a concurrent build of the same key writes the same bytes
            os.replace(_compile(cxx, flags, tmp), path)
    lib = ctypes.CDLL(path)
    lib.sf_abi_version.restype = ctypes.c_int
    if lib.sf_abi_version() != _ABI:
        raise RuntimeError(f"{path} has ABI {lib.sf_abi_version()}, expected {_ABI}")
    _apply(lib, _signatures)
    return lib


def enabled() -> bool:
    """Whether the compiled kernels may be used at all (``SPIKEFORMER_NATIVE`` is not ``0``/``false``/``off``)."""
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
                    "spikeformer: the compiled CPU kernels are unavailable, using the slower pure-PyTorch "
                    f"kernel ({_error}). Install a C++ compiler (g++ or clang++) to get them, or set "
                    "SPIKEFORMER_NATIVE=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _tried = True
    return _lib


def available() -> bool:
    """Whether the compiled kernels can run here (enabled, and built or buildable)."""
    return library() is not None


def require() -> None:
    """Builds the kernels and raises if that failed where a C++ compiler is present and they are enabled (``make
    test`` calls it first: a kernel that does not compile must fail the suite, not skip the kernel tests)."""
    if library() is None and enabled() and _compiler() is not None:
        raise RuntimeError(f"the compiled CPU kernels did not build: {_error}")


def build_error() -> Optional[str]:
    """Why the kernels are unavailable (after a failed :func:`library` call), else ``None``."""
    return _error


def threads() -> int:
    """The OpenMP threads a kernel call uses: PyTorch's intra-op setting."""
    return max(1, torch.get_num_threads())


def ptr(t: Optional[torch.Tensor]):
    """A tensor's data as a C pointer (``None``: a null pointer)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def f32(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as a contiguous float32 tensor for a kernel's argument (itself when it is one), detached."""
    t = t.detach()
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


class LastInput:
    """A value computed from a tensor (its packed form), kept for the next call with the same tensor unchanged: the
    same memory, shape, strides and version counter (a strong reference keeps the memory from being reused while it
    is the key). Attention's q, k and v read the same tokens, which are then packed once."""

    def __init__(self):
        self._entry: Optional[tuple] = None

    def get(self, x: torch.Tensor, make, *extra):
        """``make()``, or the value kept for ``x`` (and ``extra``) by the previous call."""
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x._version, extra)
        if self._entry is not None and self._entry[0] == key:
            return self._entry[2]
        value = make()
        self._entry = (key, x, value)
        return value

    def clear(self) -> None:
        self._entry = None


def is_bf16(t: torch.Tensor) -> int:
    """The kernels' dtype flag: 1 for bfloat16 data, 0 for float32."""
    return int(t.dtype == torch.bfloat16)
