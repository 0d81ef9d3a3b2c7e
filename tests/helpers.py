"""Shared helpers of the tests."""

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=600, env=None, check=False):
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "spikeformer", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def weights(path):
    return load_file(str(path))


def max_weight_diff(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].numel())


def exact_then_fast(model, x, calls: list):
    """``model(x)`` on the exact path, then with ``spikeformer.layers.use_fast_kernels``: returns the exact output,
    what ``calls`` (a recorder of compiled-kernel calls) held after it, and the fast output."""
    import spikeformer.layers

    spikeformer.layers.use_exact_kernels(model)
    ref = model(x)
    exact_calls = list(calls)
    spikeformer.layers.use_fast_kernels(model)
    return ref, exact_calls, model(x)
