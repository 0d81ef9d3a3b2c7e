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


def cpu_kind() -> str:
    """The kind of CPU a float golden file is recorded on: ``""`` for an AMD (or other non-Intel) CPU with AVX2, the
    base files; else PyTorch's capability, lower case, with ``_intel`` on Intel CPUs (``avx512``, ``avx512_intel``).

    PyTorch's vectorised kernels differ between AVX2 and AVX512, and MKL, PyTorch's BLAS, runs its AVX2 kernels on
    AMD CPUs and its AVX512 kernels on Intel's, which sum a GEMM in another order. The official code's outputs move
    with them, as ours do."""
    import torch

    from spikeformer.kernels.cpu import build

    cap = torch.backends.cpu.get_cpu_capability().lower()
    if build.cpu_vendor() == "GenuineIntel":
        return f"{cap}_intel"
    return "" if cap == "avx2" else cap


def assert_golden(got, ref, recorded_here: bool, tol: float) -> None:
    """``got`` equals the golden ``ref`` bit for bit where the golden was recorded on this kind of CPU
    (:func:`golden_for_this_cpu`), else within ``tol`` (rounding only)."""
    import torch

    if recorded_here:
        assert torch.equal(got, ref), (got - ref).abs().max().item()
    else:
        assert (got - ref).abs().max().item() <= tol


def skip_unless_recorded(recorded_here: bool, script: str) -> None:
    """Skip a bit-for-bit golden test on a kind of CPU without its golden, naming the ``tests/data`` script to run."""
    import pytest

    if not recorded_here:
        pytest.skip(f"no golden recorded on this kind of CPU ({cpu_kind()}): run tests/data/{script} on one")


def golden_for_this_cpu(path):
    """``(file, recorded_here)``: the golden ``path``, or its sibling recorded on a CPU of this machine's kind.

    A float network's outputs (the official code's and ours alike: same operations, same bits on one machine) change
    in the last bits between CPU kinds (:func:`cpu_kind`), so the goldens of float models are recorded once per
    kind: ``<name>.safetensors`` on an AMD AVX2 CPU, ``<name>_<kind>.safetensors`` elsewhere (the
    ``_make_golden.py`` script of the file, run on such a machine, with ``--out``). ``recorded_here`` is False when
    this kind has none (then only comparisons up to rounding can use the file)."""
    path = Path(path)
    kind = cpu_kind()
    if not kind:
        return path, True
    other = path.with_name(f"{path.stem}_{kind}{path.suffix}")
    return (other, True) if other.exists() else (path, False)
