"""Fast against exact numerics, for every registered model: one training step (forward, backward, AdamW step).

    python benchmarks/bench_numerics.py                          # every model at a small input (B=4, T=2, 32x32)
    python benchmarks/bench_numerics.py --models 'spikingresformer_cifar' 'masnn_*' --batch 32 --T 4
    python benchmarks/bench_numerics.py --no-bf16                # fp32 only (CPUs without native bf16)

For each model the three variants -- exact fp32 (the official operations), fast fp32 (the default) and fast under
bf16 autocast -- are built once in this process from the same weights and their steps alternate for ``--rounds``
rounds, so load from elsewhere hits all three alike; the median step time of each is reported with the ratios
exact/fast (> 1: fast is faster) and exact-fp32/fast-bf16. The order within a round is reversed every other round
(exact, fast, bf16, then bf16, fast, exact): with a fixed order, a control that timed the exact model against a second
copy of itself in the "fast" slot gave 0.93x for ``spikeformer_imagenet`` and 0.98x for ``spikeformer_dvs_digits``,
a bias against whichever variant runs second; with the order alternating the same control gave 1.02x and 1.04x, the
noise of the measurement. ``--control`` runs that control (the "fast" slot holds exact numerics). Run it with nothing
else on the machine. Static models get images (16x16 for the digits configs), event models event-count frames.

The column "same ops" says whether fast fp32's training step runs the same operations as exact's: the profiler's
operators and autograd Functions of one step, each with its input shapes, strides and dtypes, compared as multisets
after the warm-up (``--no-ops`` skips it). Where fast paths do not pay for a model's shapes they fall back to the exact
operations by their own rules; then both variants run the same work and their ratio is the measurement's noise, which
the closing line reports apart from a real regression.
"""

from __future__ import annotations

import argparse
import collections
import copy
import fnmatch
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import spikeformer  # noqa: E402
from spikeformer.engine.runtime import reuse_freed_memory  # noqa: E402
from spikeformer.layers import set_numerics  # noqa: E402
from spikeformer.models import get_model_info, list_models  # noqa: E402
import _machine  # noqa: E402  (benchmarks/ is the script's folder)


def make_input(name: str, batch: int, T: int, side: int | None):
    info = get_model_info(name)
    c, h, _ = info.input_size
    s = side or (16 if h <= 16 else 32)
    g = torch.Generator().manual_seed(0)
    if c == 2:
        x = torch.randint(0, 3, (T, batch, c, s, s), generator=g).float()
    else:
        x = torch.rand(batch, c, s, s, generator=g) * 2 - 1
    return x, torch.randint(0, info.num_classes, (batch,), generator=g)


def step_operations(step) -> collections.Counter:
    """The profiled operations of one call of ``step()``: a count of each ``(name, input shapes, input strides, input
    dtypes)`` (the operators, the autograd Functions and their backward nodes, as ``torch.profiler`` records them on
    the CPU; the strides tell a channels-last convolution from an NCHW one)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    return collections.Counter((e.name(), repr(e.structured_input_shapes()), repr(e.structured_input_strides()),
                                repr(e.dtypes())) for e in prof.profiler.kineto_results.events())


def bench_model(name: str, a) -> dict:
    torch.manual_seed(0)
    base = spikeformer.create_model(name, T=a.T, numerics="exact")
    variants = {}
    second = "exact" if a.control else "fast"
    for tag, numerics, bf16 in (("exact", "exact", False), ("fast", second, False), ("fast-bf16", "fast", True)):
        if bf16 and not a.bf16:
            continue
        m = copy.deepcopy(base)
        set_numerics(m, numerics)
        m.train()
        # the trainer's AdamW (engine/train.py: fused where the parameters allow it); --optimizer loop: PyTorch's
        # default per-tensor loop, which on the ImageNet models at this small input took a third of a step
        variants[tag] = (m, torch.optim.AdamW(m.parameters(), lr=1e-4, fused=a.optimizer == "fused"), bf16)
    x, y = make_input(name, a.batch, a.T, a.side)

    def step(tag):
        m, opt, bf16 = variants[tag]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times = {tag: [] for tag in variants}
    tags = list(variants)
    for r in range(a.warmup + a.rounds):
        for tag in (tags if r % 2 == 0 else tags[::-1]):  # the order reversed every other round (see the docstring)
            t = step(tag)
            if r >= a.warmup:
                times[tag].append(t)
    out = {tag: statistics.median(v) for tag, v in times.items()}
    if a.ops:
        out["same_ops"] = step_operations(lambda: step("exact")) == step_operations(lambda: step("fast"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["*"], help="shell patterns of registered names")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--T", type=int, default=2)
    ap.add_argument("--side", type=int, default=None, help="input height and width (default 32; 16 for digits)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--optimizer", choices=["fused", "loop"], default="fused",
                    help="AdamW fused as the trainer builds it (default) or PyTorch's per-tensor loop")
    ap.add_argument("--control", action="store_true",
                    help="time the exact model against a second exact copy in the fast slot (the measurement's noise)")
    ap.add_argument("--no-ops", dest="ops", action="store_false",
                    help="do not compare the operations of fast and exact fp32's steps (the \"same ops\" column)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="time exact and fast fp32 only (on CPUs without native bf16, autocast emulates it slowly)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    reuse_freed_memory()  # as `spikeformer train` does on CPU
    names = [n for n in list_models(task="classify") if any(fnmatch.fnmatch(n, p) for p in a.models)]
    print(f"command: python benchmarks/{os.path.basename(__file__)} " + " ".join(sys.argv[1:]))
    print(f"machine: {_machine.describe()}, "
          f"{a.threads} threads; batch {a.batch}, T={a.T}; medians of {a.rounds} alternating rounds after "
          f"{a.warmup} warm-up rounds, the order reversed every other round; AdamW {a.optimizer}; 1-min load "
          f"average at start {os.getloadavg()[0]:.1f}" + ("; CONTROL: the fast column is a second exact copy" if a.control else ""))
    print()
    print("| model | exact fp32 s/step | fast fp32 s/step | fast bf16 s/step | fast vs exact | bf16 fast vs exact fp32 "
          "| same ops |")
    print("|---|---|---|---|---|---|---|")
    slower, same = [], []
    for n in names:
        r = bench_model(n, a)
        ratio = r["exact"] / r["fast"]
        if ratio < 1.0:
            (same if r.get("same_ops") else slower).append(n)
        bf = (f"{r['fast-bf16']:.4f}", f"{r['exact'] / r['fast-bf16']:.2f}x") if a.bf16 else ("-", "-")
        ops = "-" if "same_ops" not in r else ("yes" if r["same_ops"] else "no")
        print(f"| {n} | {r['exact']:.4f} | {r['fast']:.4f} | {bf[0]} | {ratio:.2f}x | {bf[1]} | {ops} |", flush=True)
    print()
    print(f"1-min load average at end {os.getloadavg()[0]:.1f}; fast slower than exact: "
          + (", ".join(slower) if slower else "none")
          + ("; below 1.00x but running exact's operations (the measurement's noise): " + ", ".join(same)
             if same else ""))


if __name__ == "__main__":
    main()
