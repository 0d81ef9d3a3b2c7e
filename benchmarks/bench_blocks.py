"""One training step (forward and backward) of a Conv3x3-BN-IF block, fast numerics against exact, by size.

    python benchmarks/bench_blocks.py
    python benchmarks/bench_blocks.py --rounds 50

For each shape the exact block, the fast block as shipped, and the fast block with the small-block rule switched off
(``layers/blocks.py``: ``MIN_FAST_BLOCK_ELEMENTS`` set to 0, so the fast kernels run at every size) are timed in one
process, alternating, and the ratios exact / fast are printed (above 1: fast is faster). The input is spikes at 15 %
density (images for the first, 1-channel row), frames ``[2, TB/2, C, H, W]`` in NCHW (the rule applies to blocks on
NCHW frames: the input, or an exact block's output; a block fed channels-last frames keeps the fast kernels). This is where the threshold of the
small-block rule comes from. Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [  # (in, out, side, input is spikes): the layers of spiking_convnet_digits, then wider ones
    (1, 16, 16, False), (16, 16, 16, True), (16, 32, 8, True), (32, 32, 8, True), (32, 64, 4, True),
    (64, 64, 4, True), (64, 64, 16, True), (128, 128, 16, True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--tb", type=int, nargs="+", default=[8, 32, 128], help="frames per call (T*B)")
    a = ap.parse_args()

    import spikeformer.layers.blocks as blocks
    from spikeformer.layers import set_numerics
    from spikeformer.models.spiking_convnet import IF_DEFAULTS, ConvBlock
    from spikeformer.neurons import neuron_factory

    make = neuron_factory("if", **IF_DEFAULTS)
    threshold = blocks.MIN_FAST_BLOCK_ELEMENTS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MIN_FAST_BLOCK_ELEMENTS={threshold}")
    print("| block | T*B | output elements | exact ms | fast (shipped) | fast kernels at every size |")
    print("|---|---|---|---|---|---|")
    for cin, cout, side, spikes in SHAPES:
        for tb in a.tb:
            torch.manual_seed(0)
            exact = ConvBlock(cin, cout, make, spikes_in=spikes)
            fast = ConvBlock(cin, cout, make, spikes_in=spikes)
            fast.load_state_dict(exact.state_dict())
            set_numerics(exact, "exact")
            set_numerics(fast, "fast")
            shape = (2, tb // 2, cin, side, side)
            x = (torch.rand(shape) < 0.15).float() if spikes else torch.rand(shape)
            # NCHW frames, as the input or an exact block's output: what the small-block rule looks at (a block fed
            # channels-last frames by a fast block keeps the fast path at every size)
            xs = {k: x.clone().requires_grad_() for k in ("exact", "fast", "always")}
            mods = {"exact": exact, "fast": fast, "always": fast}

            def step(k):
                blocks.MIN_FAST_BLOCK_ELEMENTS = 0 if k == "always" else threshold
                mods[k](xs[k]).sum().backward()

            times = {k: [] for k in mods}
            for r in range(a.warmup + a.rounds):
                for k in mods:
                    t0 = time.perf_counter()
                    step(k)
                    if r >= a.warmup:
                        times[k].append(time.perf_counter() - t0)
            blocks.MIN_FAST_BLOCK_ELEMENTS = threshold
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"| {cin}->{cout} at {side}x{side} | {tb} | {tb * cout * side * side} | {med['exact'] * 1e3:.2f} | "
                  f"{med['exact'] / med['fast']:.2f}x | {med['exact'] / med['always']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
