"""``benchmarks/bench_rule_ab.py``: both settings of each rule run, and the rule is left as this CPU has it."""

import importlib.util
import os
import sys

import pytest
import torch

from spikeformer.kernels.cpu import split, winograd
from spikeformer.layers import blocks
from spikeformer.models import spikingresformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_rule_ab", os.path.join(ROOT, "benchmarks", "bench_rule_ab.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_both_settings_run_and_the_cpu_setting_stays(bench, monkeypatch, capsys):
    saved = {name: getattr(winograd, name) for name in winograd.limits(winograd.cpu_kind())}
    seen = []
    real = bench.RULES["winograd-limits"]
    monkeypatch.setitem(bench.RULES, "winograd-limits",
                        tuple(lambda f=f, tag=tag: (seen.append(tag), f()) for tag, f in zip("AB", real)))
    monkeypatch.setattr(sys, "argv", ["bench_rule_ab.py", "--rule", "winograd-limits", "--model",
                                      "spikformer_digits_1_64", "--batch", "2", "--T", "1", "--rounds", "2",
                                      "--warmup", "0"])
    bench.main()
    out = capsys.readouterr().out
    assert seen == ["A", "B", "B", "A", "B"]  # alternating, reversed every other round, and B (this CPU's) at the end
    assert "A: median" in out and "B: median" in out and "A/B:" in out
    assert {name: getattr(winograd, name) for name in saved} == saved
    bench.RULES["spikingresformer-bf16-layout"][1]()
    assert spikingresformer._BF16_PIXEL_WEIGHT == 4
    bench.RULES["split-products"][0]()
    assert split._forced is False and not split.available()
    bench.RULES["split-products"][1]()
    assert split._forced is None
    rule = blocks._centre_tap_only
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    bench.RULES["centre-tap"][0]()
    assert not blocks._centre_tap_only(conv)
    bench.RULES["centre-tap"][1]()
    assert blocks._centre_tap_only is rule and rule(conv)
