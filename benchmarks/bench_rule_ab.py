"""One model's training step under two settings of a routing rule, alternating in one process (A/B).

Two processes cannot separate a rule worth a few percent on these VMs: between runs minutes apart the same step
moves by 10-25 %. Here the model, optimizer and batch are built once and the rule's module constants are switched
between steps, the order reversed every other round, so load from elsewhere hits both settings alike.

    python benchmarks/bench_rule_ab.py --rule winograd-limits --model spikformer_cifar_4_384
    python benchmarks/bench_rule_ab.py --rule spikingresformer-bf16-layout --model spikingresformer_cifar --bf16

Rules (``A``: the other setting, ``B``: what this CPU uses now):
- ``winograd-limits``: ``kernels/cpu/winograd.py`` ``limits(kind)``, A another CPU kind's set (AVX2 CPUs: the AMD
  AVX512 set; AMD AVX512 CPUs: the AVX2 set; Intel AVX512 CPUs: the AMD AVX512 set they used before they had their
  own), B this CPU's (``winograd.cpu_kind()``).
- ``spikingresformer-bf16-layout``: ``models/spikingresformer.py`` ``_BF16_PIXEL_WEIGHT``, A 1 (the fp32 rule), B 4.
- ``split-products``: ``kernels/cpu/split.py``, A off (spike counts by the table lookups), B this CPU's rule (on
  with AMX tiles).
- ``centre-tap``: ``layers/blocks.py`` ``_centre_tap_only``, A off ('same' convolutions of 1x1 maps run the whole
  kernel), B on (their centre tap's product).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import spikeformer  # noqa: E402
from spikeformer.engine.runtime import reuse_freed_memory  # noqa: E402
import _machine  # noqa: E402  (benchmarks/ is the script's folder)
from bench_numerics import make_input  # noqa: E402


def _winograd(this_cpu: bool):
    from spikeformer.kernels.cpu import winograd

    def apply():
        kind = winograd.cpu_kind()
        if not this_cpu:
            kind = {"avx2": "avx512", "avx512": "avx2", "avx512_intel": "avx512"}[kind]
        for name, value in winograd.limits(kind).items():
            setattr(winograd, name, value)
    return apply


def _resformer_weight(weight: int):
    from spikeformer.models import spikingresformer

    def apply():
        spikingresformer._BF16_PIXEL_WEIGHT = weight
    return apply


def _split(this_cpu: bool):
    from spikeformer.kernels.cpu import split

    def apply():
        split._forced = None if this_cpu else False
    return apply


def _centre_tap(on: bool):
    from spikeformer.layers import blocks
    rule = blocks._centre_tap_only

    def apply():
        blocks._centre_tap_only = rule if on else (lambda conv: False)
    return apply


RULES = {
    "winograd-limits": (_winograd(False), _winograd(True)),
    "spikingresformer-bf16-layout": (_resformer_weight(1), _resformer_weight(4)),
    "split-products": (_split(False), _split(True)),
    "centre-tap": (_centre_tap(False), _centre_tap(True)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rule", required=True, choices=sorted(RULES))
    ap.add_argument("--model", required=True)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()

    reuse_freed_memory()  # as `spikeformer train` does: steps without page faults
    torch.manual_seed(0)
    model = spikeformer.create_model(a.model, T=a.T).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x, y = make_input(a.model, a.batch, a.T, None)

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    settings = dict(zip("AB", RULES[a.rule]))
    times = {k: [] for k in settings}
    for r in range(a.warmup + a.rounds):
        for k in ("AB" if r % 2 == 0 else "BA"):
            settings[k]()
            t = step()
            if r >= a.warmup:
                times[k].append(t)
    settings["B"]()
    print(f"command: python benchmarks/bench_rule_ab.py {' '.join(sys.argv[1:])}")
    print(f"machine: {_machine.describe()}; batch {a.batch}, T={a.T}, {'bf16' if a.bf16 else 'fp32'}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in "AB":
        print(f"{k}: median {med[k]:.4f} s/step over {len(times[k])} steps: {', '.join(f'{t:.3f}' for t in times[k])}")
    print(f"A/B: {med['A'] / med['B']:.3f} (> 1: B faster)")


if __name__ == "__main__":
    main()
