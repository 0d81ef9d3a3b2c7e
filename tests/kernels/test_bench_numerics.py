"""``benchmarks/bench_numerics.py``: the "same ops" column tells a step that runs other operations, shapes or memory
layouts from one that runs the same, and the table reports it per model."""

import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_numerics",
                                                  os.path.join(ROOT, "benchmarks", "bench_numerics.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _step(conv, x):
    def step():
        conv.zero_grad(set_to_none=True)  # as the benchmark's steps: every step writes fresh gradients
        conv(x).sum().backward()
    return step


def test_step_operations_tell_layouts_and_shapes_apart(bench):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 4, 4)
    nchw = bench.step_operations(_step(conv, x))
    assert nchw == bench.step_operations(_step(conv, x))  # the same step twice: equal
    assert sum(nchw.values()) > 3 and any("convolution" in k[0] for k in nchw)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert bench.step_operations(_step(conv, cl)) != nchw  # same shapes, other strides
    assert bench.step_operations(_step(conv, x[:1])) != nchw  # other shapes


def test_step_operations_see_dtypes(bench):
    conv = torch.nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 4, 4)
    fp32 = bench.step_operations(lambda: conv(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = bench.step_operations(lambda: conv(x))
    assert fp32 != bf16


def test_table_has_the_column(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_numerics.py", "--models", "spikformer_digits_1_64", "--batch", "2",
                                      "--T", "1", "--rounds", "2", "--warmup", "1", "--no-bf16"])
    bench.main()
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| spikformer_digits_1_64 |")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert len(cells) == 7 and cells[6] in ("yes", "no")
    # Spikformer's fast path (token projections as Linear layers, not the official Conv1d) runs other operations
    assert cells[6] == "no"
    assert float(cells[1]) > 0 and float(cells[2]) > 0
