"""``benchmarks/bench_gpu.py --dry-run``: the GPU benchmark's whole code path (both models, training and inference
steps, timing, report) on CPU with tiny sizes, so it is known to run before it meets a GPU."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("spikingjelly.activation_based.model.spikformer",
                    reason="SpikingJelly 2.0 (the benchmark's baseline) is not installed")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_dry_run_runs_both_models_end_to_end(capsys):
    assert _bench().main(["--dry-run", "--config", "cifar"]) == 0
    out = capsys.readouterr().out
    assert "command: bench_gpu.py --dry-run --config cifar" in out
    assert "SpikingJelly: spikingjelly.activation_based.model.spikformer" in out
    for phase in ("train", "infer"):
        m = re.search(rf"{phase}\s+ms/step ours\s+([\d.]+)\s+SJ\s+([\d.]+)\s+speed-up SJ/ours\s+([\d.]+)", out)
        assert m is not None, out
        ours, sj, ratio = map(float, m.groups())
        assert ours > 0 and sj > 0 and abs(ratio - sj / ours) <= 0.01 * ratio + 0.01


def test_without_a_gpu_the_full_run_says_what_to_do(capsys):
    bench = _bench()
    if bench.torch.cuda.is_available():
        pytest.skip("a GPU is present: the full run would start")
    assert bench.main(["--config", "cifar"]) == 2
    assert "--dry-run" in capsys.readouterr().err
