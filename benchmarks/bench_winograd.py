"""The data gradient of 3x3 convolutions in fp32: Winograd F(4x4, 3x3) (``kernels/cpu/winograd.py``) against
oneDNN's direct data-gradient convolution, in one run.

Shapes: the stems of Spikformer 4-384, SDT 2-512 and QKFormer 10-384 at batch 32, T=4 on CIFAR (128 frames), and
small shapes around the rule that keeps the direct convolution (:data:`winograd.MIN_TILES`, ``MIN_CHANNELS``,
``MIN_SIDE``; forced through Winograd here to show why). Prints medians in ms, the speed-up, and the largest error of
each against a float64 convolution, relative to the gradient's largest value. ``reuse_memory`` is applied, as in
``spikeformer train``.

    python benchmarks/bench_winograd.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_sparse import _median_ms  # noqa: E402  (benchmarks/ is the script's folder)
from spikeformer.engine.runtime import reuse_freed_memory  # noqa: E402
from spikeformer.kernels.cpu import build, winograd  # noqa: E402

# (name, frames, input channels, output channels, side)
SHAPES = [
    ("Spikformer stem 48->96 32x32", 128, 48, 96, 32),
    ("Spikformer stem 96->192 32x32", 128, 96, 192, 32),
    ("Spikformer stem 192->384 16x16", 128, 192, 384, 16),
    ("Spikformer rpe 384->384 8x8", 128, 384, 384, 8),
    ("SDT stem 64->128 32x32", 128, 64, 128, 32),
    ("SDT stem 128->256 32x32", 128, 128, 256, 32),
    ("SDT stem 256->512 16x16", 128, 256, 512, 16),
    ("SDT rpe 512->512 8x8", 128, 512, 512, 8),
    ("QKFormer 10-384 stem 48->96 16x16", 128, 48, 96, 16),
    ("QKFormer 10-384 stem 96->192 8x8", 128, 96, 192, 8),
    ("small 16->16 16x16", 8, 16, 16, 16),
    ("small 64->64 16x16", 8, 64, 64, 16),
    ("small 32->32 16x16 (under MIN_CHANNELS)", 8, 32, 32, 16),
    ("small 128->128 8x8 (32 tiles, under MIN_TILES)", 8, 128, 128, 8),
    ("small 256->256 4x4 (under MIN_SIDE)", 8, 256, 256, 4),
]


def direct(g: torch.Tensor, shape: torch.Size, w: torch.Tensor) -> torch.Tensor:
    like = torch.empty(shape, memory_format=torch.channels_last)
    return torch.ops.aten.convolution_backward(g, like, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [True, False, False])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if build.library() is None:
        raise SystemExit(f"the compiled CPU kernels are unavailable: {build.build_error()}")
    reuse_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32; median of {a.reps}")
    print("| data gradient | frames | direct ms | Winograd ms | speed-up | direct error | Winograd error | used |")
    print("|---|---|---|---|---|---|---|---|")
    total_d = total_w = 0.0
    for name, N, cin, cout, side in SHAPES:
        gen = torch.Generator().manual_seed(0)
        g = torch.randn(N, cout, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5)
        shape = torch.Size((N, cin, side, side))
        used = winograd.applies(N, side, side, w, torch.float32)
        saved = (winograd.MIN_TILES, winograd.MIN_CHANNELS, winograd.MIN_SIDE)
        winograd.MIN_TILES, winograd.MIN_CHANNELS, winograd.MIN_SIDE = 1, 1, 1  # time it even where unused
        try:
            td = _median_ms(lambda: direct(g, shape, w), a.reps)
            tw = _median_ms(lambda: winograd.conv3x3_input_grad(g, shape, w), a.reps)
            ref = torch.nn.grad.conv2d_input(shape, w.double(), g.double(), padding=1)
            scale = ref.abs().max().item()
            ed = (direct(g, shape, w).double() - ref).abs().max().item() / scale
            ew = (winograd.conv3x3_input_grad(g, shape, w).double() - ref).abs().max().item() / scale
        finally:
            winograd.MIN_TILES, winograd.MIN_CHANNELS, winograd.MIN_SIDE = saved
        if N == 128:
            total_d, total_w = total_d + td, total_w + tw
        print(f"| {name} | {N} | {td:.2f} | {tw:.2f} | {td / tw:.2f}x | {ed:.1e} | {ew:.1e} | "
              f"{'yes' if used else 'no'} |")
    print(f"\nthe batch-32 shapes: direct {total_d:.0f} ms, Winograd {total_w:.0f} ms, {total_d / total_w:.2f}x")


if __name__ == "__main__":
    main()
