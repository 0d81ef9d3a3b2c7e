"""The compiled neuron kernel (``kernels/cpu/neuron.cpp``) of this tree against the same kernel of a git revision.

    python benchmarks/bench_neuron_kernel.py [--against HEAD~1] [--rounds 5] [--threads 2]

Builds ``neuron.cpp`` (with its headers) of the working tree and of ``--against`` into two libraries in a temporary
folder, with the flags the package builds with, and times one ``sf_forward`` and one ``sf_backward`` call of each on
the same data, alternating the two libraries round by round; prints the medians and the ratio old / new per shape,
dtype and surrogate, and checks that both give the same spikes and the same input gradient, bit for bit.

The shapes are layers of the families' training steps at batch 32, T=4: Spikformer's 1536-channel MLP tokens
``[4, 32, 64, 1536]`` and SpikingResformer's 768-channel 16x16 frames ``[4, 32, 768, 16, 16]``. LIF with tau 2, hard
reset to 0 with the reset detached (the families' setting); sigmoid (alpha 4) and atan (alpha 2) surrogates.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spikeformer.kernels.cpu import build  # noqa: E402
from spikeformer.kernels.cpu.neuron import Params  # noqa: E402
import _machine  # noqa: E402  (benchmarks/ is the script's folder)

FILES = ("common.h", "neuron.h", "neuron.cpp")
SRC = "spikeformer/kernels/cpu"


def compile_lib(folder: str, read) -> ctypes.CDLL:
    """``neuron.cpp`` built from the texts ``read(name)`` gives, into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    for name in FILES:
        with open(os.path.join(folder, name), "w") as f:
            f.write(read(name))
    cxx = build._compiler()
    if cxx is None:
        raise SystemExit("no C++ compiler found (set CXX, or install g++ or clang++)")
    flags = list(build._COMPILE_FLAGS)
    if build._try_flags(cxx, ["-march=native"], folder):
        flags.append("-march=native")
    out = os.path.join(folder, "neuron.so")
    subprocess.run([cxx, *flags, *build._LINK_FLAGS, os.path.join(folder, "neuron.cpp"), "-o", out], check=True)
    lib = ctypes.CDLL(out)
    lib.sf_backward.restype = ctypes.c_double
    return lib


def params(T: int, N: int, surrogate: int, threads: int) -> Params:
    p = Params()
    p.T, p.N, p.charge, p.hard, p.detach, p.surrogate, p.nthreads, p.vr_zero = T, N, 1, 1, 1, surrogate, threads, 1
    p.vth, p.vr, p.tau, p.rate = 1.0, 0.0, 2.0, 0.5
    p.alpha = 4.0 if surrogate == 1 else 2.0
    p.keep, p.in_gain, p.vinit = 0.5, 0.5, 0.0
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="HEAD~1", help="the git revision whose neuron kernel is the baseline")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10, help="calls timed per round (their median counts)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def old(name):
        return subprocess.run(["git", "-C", root, "show", f"{a.against}:{SRC}/{name}"], check=True,
                              capture_output=True, text=True).stdout

    def new(name):
        with open(os.path.join(root, SRC, name)) as f:
            return f.read()

    print(f"command: python benchmarks/{os.path.basename(__file__)} " + " ".join(sys.argv[1:]))
    print(f"machine: {_machine.describe()}, {a.threads} threads; medians of {a.rounds} alternating rounds of "
          f"{a.reps} calls; baseline: neuron.cpp of {a.against}")
    print()
    print("| shape | dtype | surrogate | forward old / new ms | ratio | backward old / new ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"old": compile_lib(os.path.join(tmp, "old"), old), "new": compile_lib(os.path.join(tmp, "new"), new)}
        for shape in ((4, 32, 64, 1536), (4, 32, 768, 16, 16)):
            for dtype in (torch.float32, torch.bfloat16):
                for surrogate, sname in ((1, "sigmoid"), (2, "atan")):
                    g = torch.Generator().manual_seed(0)
                    x = (torch.randn(shape, generator=g) * 1.5).to(dtype)
                    gs = torch.randn(shape, generator=g).to(dtype)
                    T, N = shape[0], x[0].numel()
                    p = params(T, N, surrogate, a.threads)
                    bf = int(dtype == torch.bfloat16)
                    outs = {k: (torch.empty_like(x), torch.empty_like(x)) for k in libs}
                    times = {(k, d): [] for k in libs for d in ("fwd", "bwd")}

                    def run(k, d):
                        s, gx = outs[k]
                        if d == "fwd":
                            libs[k].sf_forward(ctypes.byref(p), build.ptr(x), bf, build.ptr(s), None, None)
                        else:
                            libs[k].sf_backward(ctypes.byref(p), build.ptr(x), bf, None, build.ptr(gs), bf, None,
                                                build.ptr(gx), None, 0)

                    for r in range(a.rounds + 1):
                        for k in (libs if r % 2 == 0 else list(libs)[::-1]):
                            for d in ("fwd", "bwd"):
                                run(k, d)
                                ts = []
                                for _ in range(a.reps):
                                    t0 = time.perf_counter()
                                    run(k, d)
                                    ts.append(time.perf_counter() - t0)
                                if r > 0:
                                    times[(k, d)].append(statistics.median(ts) * 1e3)
                    same = all(torch.equal(outs["old"][i], outs["new"][i]) for i in range(2))
                    if not same:
                        raise SystemExit(f"{shape} {dtype} {sname}: the two kernels disagree")
                    m = {key: statistics.median(v) for key, v in times.items()}
                    print(f"| {list(shape)} | {str(dtype)[6:]} | {sname} | {m['old', 'fwd']:.2f} / {m['new', 'fwd']:.2f}"
                          f" | {m['old', 'fwd'] / m['new', 'fwd']:.2f}x | {m['old', 'bwd']:.2f} / "
                          f"{m['new', 'bwd']:.2f} | {m['old', 'bwd'] / m['new', 'bwd']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
