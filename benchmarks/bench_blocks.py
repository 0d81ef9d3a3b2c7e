"""One training step (forward and backward) of a Conv3x3-BN-IF block, fast numerics against exact, by size.

    python benchmarks/bench_blocks.py
    python benchmarks/bench_blocks.py --rounds 50
    python benchmarks/bench_blocks.py --pointwise            # 1x1 convolutions: the primitive against one GEMM
    python benchmarks/bench_blocks.py --pointwise --bf16

For each shape the exact block, the fast block as shipped, and the fast block with the small-block rule switched off
(``layers/blocks.py``: ``MIN_FAST_BLOCK_ELEMENTS`` set to 0, so the fast kernels run at every size) are timed in one
process, alternating, and the ratios exact / fast are printed (above 1: fast is faster). The input is spikes at 15 %
density (images for the first, 1-channel row), frames ``[2, TB/2, C, H, W]`` in NCHW (the rule applies to blocks on
NCHW frames: the input, or an exact block's output; a block fed channels-last frames keeps the fast kernels). This is where the threshold of the
small-block rule comes from. Run with nothing else on the machine.

``--pointwise`` times instead one training step (forward and backward) of a 1x1 convolution on channels-last frames
by size: PyTorch's convolution (oneDNN) against ``F.linear`` on the frames' channel-last view, the fast path of
``layers/blocks.py`` up to ``POINTWISE_GEMM_MAX_ROWS`` pixels per call (``--bf16``: under bf16 autocast).
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


POINTWISE_SHAPES = [  # (frames, in, out, side): SDT 8-384 at batch 4, T=2, 32x32 (2x2 maps), then larger ones
    (8, 384, 384, 2), (8, 384, 1536, 2), (8, 384, 384, 4), (16, 512, 512, 4), (8, 384, 384, 8), (32, 512, 2048, 4),
    (16, 384, 384, 8), (32, 128, 128, 8), (32, 384, 384, 8), (16, 256, 256, 16), (32, 128, 128, 16),
    (128, 384, 384, 8), (128, 512, 512, 8), (128, 2048, 512, 8), (128, 64, 64, 32),
]


def pointwise(a) -> None:
    import torch.nn.functional as F
    from torch import nn

    from spikeformer.layers.blocks import POINTWISE_GEMM_MAX_ROWS

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'bf16 autocast' if a.bf16 else 'fp32'}, "
          f"POINTWISE_GEMM_MAX_ROWS={POINTWISE_GEMM_MAX_ROWS}; inputs 0/1 at 30 %")
    print("| frames x in x side^2 -> out | rows | convolution ms | GEMM ms | convolution / GEMM |")
    print("|---|---|---|---|---|")
    for n, cin, cout, side in POINTWISE_SHAPES:
        torch.manual_seed(0)
        conv = nn.Conv2d(cin, cout, 1)
        x = (torch.rand(n, cin, side, side) < 0.3).float().contiguous(memory_format=torch.channels_last)
        x.requires_grad_()

        def by_conv():
            with torch.autocast("cpu", torch.bfloat16, enabled=a.bf16):
                y = conv(x)
            y.float().sum().backward()

        def by_gemm():
            with torch.autocast("cpu", torch.bfloat16, enabled=a.bf16):
                y = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)
            y.float().sum().backward()

        times = {"conv": [], "gemm": []}
        runs = {"conv": by_conv, "gemm": by_gemm}
        for r in range(a.warmup + a.rounds):
            for k in (("conv", "gemm") if r % 2 == 0 else ("gemm", "conv")):
                t0 = time.perf_counter()
                runs[k]()
                if r >= a.warmup:
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {n} x {cin} x {side}^2 -> {cout} | {n * side * side} | {med['conv'] * 1e3:.3f} | "
              f"{med['gemm'] * 1e3:.3f} | {med['conv'] / med['gemm']:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--tb", type=int, nargs="+", default=[8, 32, 128], help="frames per call (T*B)")
    ap.add_argument("--pointwise", action="store_true", help="1x1 convolutions: the primitive against one GEMM")
    ap.add_argument("--bf16", action="store_true", help="with --pointwise: under bf16 autocast")
    a = ap.parse_args()
    if a.pointwise:
        from spikeformer.engine.runtime import reuse_freed_memory

        reuse_freed_memory()
        return pointwise(a)

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
