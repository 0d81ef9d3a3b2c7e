"""BatchNorm + LIF of one Spikformer-4-384 CIFAR training step: the fused kernel against BatchNorm then LIF.

    python benchmarks/bench_bn_neuron.py [--dtype bf16|fp32] [--rounds 5] [--threads 2]

Runs forward + backward of every BatchNorm -> LIF pair of the model's training step (batch 32, T=4: the five stem
stages as channels-last frames, 4 blocks x (q, k, v, proj, fc2 on [4, 32, 64, 384] tokens and fc1 on 1536
channels)) with ``spikeformer.layers.fused_bn.bn_neuron``, fused and unfused, in interleaved rounds; prints the
median time of each layer shape, the step totals and their ratio. Under ``--dtype bf16`` the first two stem stages
are fp32, as in the model under autocast. Also checks that both paths give the same spikes (fraction that differ).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikeformer.layers import TokenBN
from spikeformer.layers.fused_bn import bn_neuron, can_fuse
from spikeformer.neurons.nodes import LIF


def layers(dtype: torch.dtype):
    """(name, count per step, BN module, input shape, frames?, dtype) of the Spikformer-4-384 CIFAR step."""
    bf = dtype == torch.bfloat16
    f32 = torch.float32
    out = [
        ("stem0 48@32x32", 1, torch.nn.BatchNorm2d(48), (4, 32, 48, 32, 32), True, f32 if bf else dtype),
        ("stem1 96@32x32", 1, torch.nn.BatchNorm2d(96), (4, 32, 96, 32, 32), True, f32 if bf else dtype),
        ("stem2 192@32x32", 1, torch.nn.BatchNorm2d(192), (4, 32, 192, 32, 32), True, dtype),
        ("stem3 384@16x16", 1, torch.nn.BatchNorm2d(384), (4, 32, 384, 16, 16), True, dtype),
        ("rpe 384@8x8", 1, torch.nn.BatchNorm2d(384), (4, 32, 384, 8, 8), True, dtype),
        ("tokens 384", 20, TokenBN(384), (4, 32, 64, 384), False, dtype),
        ("tokens 1536", 4, TokenBN(1536), (4, 32, 64, 1536), False, dtype),
    ]
    for _, _, bn, *_ in out:
        bn.numerics = "fast"
    return out


def make_input(shape, frames: bool, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5 + 0.2
    if frames:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    return x.to(dtype)


def main(a) -> None:
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    lif = LIF(tau=2.0, detach_reset=True)
    rows = []
    for name, count, bn, shape, frames, dt in layers(dtype):
        x = make_input(shape, frames, dt, 0).requires_grad_()
        g = make_input(shape, frames, dt, 1)
        assert can_fuse(bn, lif, x), name
        spikes = {}
        times = {True: [], False: []}

        def run(fuse):
            s = bn_neuron(bn, lif, x, fuse)
            s.backward(g)
            return s

        for fuse in (False, True):  # warm-up, and the spikes of each path
            spikes[fuse] = run(fuse).detach()
        for _ in range(a.rounds):
            for fuse in (False, True):
                t0 = time.perf_counter()
                run(fuse)
                times[fuse].append(time.perf_counter() - t0)
        unf, fus = statistics.median(times[False]), statistics.median(times[True])
        differ = (spikes[True] != spikes[False]).float().mean().item()
        rows.append((name, count, unf, fus, differ))
        print(f"{name:18s} x{count:<2d} {str(dt).replace('torch.', ''):9s} unfused {unf * 1e3:7.2f} ms  "
              f"fused {fus * 1e3:7.2f} ms  {unf / fus:5.2f}x  spikes differing {differ:.1e}", flush=True)
    tu = sum(c * u for _, c, u, _, _ in rows)
    tf = sum(c * f for _, c, _, f, _ in rows)
    print(f"one {a.dtype} training step, all BN+LIF pairs: unfused {tu * 1e3:.0f} ms, fused {tf * 1e3:.0f} ms, "
          f"{tu / tf:.2f}x (saves {(tu - tf) * 1e3:.0f} ms per step)")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
