"""3x3 convolutions in fp32 by Winograd F(4x4, 3x3) (``kernels/cpu/winograd.py``), in one run: the data gradient
against oneDNN's direct data-gradient convolution (``--part data``); the forward against oneDNN's direct convolution
and the table lookups of 0/1 spikes (``--part forward``); the weight gradient against oneDNN's and the lookups'
(``--part weight``). Spikes for the lookups fire at 25 % (their cost does not depend on it).

Shapes: the stems of Spikformer 4-384, SDT 2-512 and QKFormer 10-384 at batch 32, T=4 on CIFAR (128 frames), and
small shapes around the rule that keeps the direct convolution (:data:`winograd.MIN_TILES`, ``MIN_CHANNELS``,
``MIN_SIDE``; forced through Winograd here to show why). Prints medians in ms, the speed-up, and the largest error of
each against a float64 convolution, relative to the gradient's largest value. ``reuse_memory`` is applied, as in
``spikeformer train``.

The "used" columns say what the fast path takes at that shape: ``winograd.applies`` (data gradient),
``winograd.forward_pays`` (forward of dense inputs / of spikes; dense inputs' weight gradient),
``winograd.spike_weight_grad_pays`` (the weight gradient of spikes).

    python benchmarks/bench_winograd.py [--reps 5] [--part data|forward|weight|all]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_sparse import _median_ms  # noqa: E402  (benchmarks/ is the script's folder)
from spikeformer.engine.runtime import reuse_freed_memory  # noqa: E402
from spikeformer.kernels.cpu import build, lut, weights, winograd  # noqa: E402

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
    ("QKFormer 10-384 stem 192->384 4x4", 128, 192, 384, 4),
    ("small 48->96 8x8 (64 tiles)", 16, 48, 96, 8),
    ("small 16->16 16x16", 8, 16, 16, 16),
    ("small 64->64 16x16", 8, 64, 64, 16),
    ("small 32->32 16x16 (under MIN_CHANNELS)", 8, 32, 32, 16),
    ("small 128->128 8x8 (32 tiles, under MIN_TILES)", 8, 128, 128, 8),
    ("small 256->256 4x4 (8 tiles, under MIN_TILES)", 8, 256, 256, 4),
    ("QKFormer 10-384 384->384 2x2 (under MIN_SIDE)", 128, 384, 384, 2),
]


def direct(g: torch.Tensor, shape: torch.Size, w: torch.Tensor) -> torch.Tensor:
    like = torch.empty(shape, memory_format=torch.channels_last)
    return torch.ops.aten.convolution_backward(g, like, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [True, False, False])[0]


def _spikes(N: int, cin: int, side: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (torch.rand(N, cin, side, side, generator=gen) < 0.25).float().contiguous(memory_format=torch.channels_last)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return (got.double() - ref).abs().max().item() / ref.abs().max().item()


def data_gradient(reps: int) -> None:
    print("| data gradient | frames | direct ms | Winograd ms | speed-up | direct error | Winograd error | used |")
    print("|---|---|---|---|---|---|---|---|")
    total_d = total_w = 0.0
    for name, N, cin, cout, side in SHAPES:
        gen = torch.Generator().manual_seed(0)
        g = torch.randn(N, cout, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5)
        shape = torch.Size((N, cin, side, side))
        used = winograd.applies(N, side, side, w, torch.float32)
        saved = (winograd.MIN_TILES, winograd.MIN_CHANNELS, winograd.MIN_SIDE, winograd.FEW_TILES)
        # time it even where unused
        winograd.MIN_TILES, winograd.MIN_CHANNELS, winograd.MIN_SIDE, winograd.FEW_TILES = 1, 1, 1, 0
        try:
            td = _median_ms(lambda: direct(g, shape, w), reps)
            tw = _median_ms(lambda: winograd.conv3x3_input_grad(g, shape, w), reps)
            ref = torch.nn.grad.conv2d_input(shape, w.double(), g.double(), padding=1)
            ed = _rel(direct(g, shape, w), ref)
            ew = _rel(winograd.conv3x3_input_grad(g, shape, w), ref)
        finally:
            winograd.MIN_TILES, winograd.MIN_CHANNELS, winograd.MIN_SIDE, winograd.FEW_TILES = saved
        if N == 128:
            total_d, total_w = total_d + td, total_w + tw
        print(f"| {name} | {N} | {td:.2f} | {tw:.2f} | {td / tw:.2f}x | {ed:.1e} | {ew:.1e} | "
              f"{'yes' if used else 'no'} |")
    print(f"\nthe batch-32 shapes: direct {total_d:.0f} ms, Winograd {total_w:.0f} ms, {total_d / total_w:.2f}x\n")


def forward(reps: int) -> None:
    print("| forward | frames | direct ms | lookups ms (spikes) | Winograd ms | vs direct | vs lookups | "
          "Winograd error | used (dense / spikes) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, N, cin, cout, side in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = _spikes(N, cin, side)
        w = torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5)
        u = weights.make(w, torch.float32, "winograd")  # kept across calls in inference
        with torch.no_grad():
            td = _median_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1), reps)
            codes = lut.pack_conv3x3(x, transposed=False)
            wt = weights.make(w, torch.float32, "conv3x3_tiles")
            tl = _median_ms(lambda: lut.NativeLutConv3x3.apply(x, w, None, codes, wt, None), reps)
            tw = _median_ms(lambda: winograd.conv3x3_forward(x, u, None), reps)
            ew = _rel(winograd.conv3x3_forward(x, u, None), torch.nn.functional.conv2d(x.double(), w.double(),
                                                                                     padding=1))
        dense = winograd.forward_pays(N, side, side, cin, cout)
        spikes = winograd.forward_pays(N, side, side, cin, cout, spikes=True)
        print(f"| {name} | {N} | {td:.2f} | {tl:.2f} | {tw:.2f} | {td / tw:.2f}x | {tl / tw:.2f}x | {ew:.1e} | "
              f"{'yes' if dense else 'no'} / {'yes' if spikes else 'no'} |")
    print()


def weight_gradient(reps: int) -> None:
    print("| weight gradient | frames | direct ms | lookups ms (spikes) | Winograd ms | vs direct | vs lookups | "
          "Winograd error | used (dense / spikes) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, N, cin, cout, side in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = _spikes(N, cin, side)
        g = torch.randn(N, cout, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.empty(cout, cin, 3, 3)
        td = _median_ms(lambda: torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False,
                                                                    [0, 0], 1, [False, True, False]), reps)
        codes_t = lut.pack_conv3x3(x, transposed=True, forward=False)[1]
        gl = g.permute(0, 2, 3, 1)
        tl = _median_ms(lambda: lut._wgrad(N * side * side, 9 * cin, codes_t, gl), reps)
        tw = _median_ms(lambda: winograd.conv3x3_weight_grad(x, g), reps)
        ref = torch.nn.grad.conv2d_weight(x.double(), (cout, cin, 3, 3), g.double(), padding=1)
        ew = _rel(winograd.conv3x3_weight_grad(x, g), ref)
        dense = winograd.forward_pays(N, side, side, cin, cout)
        spikes = winograd.forward_pays(N, side, side, cin, cout, spikes=True) and winograd.spike_weight_grad_pays(
            side, side, cin, cout)
        print(f"| {name} | {N} | {td:.2f} | {tl:.2f} | {tw:.2f} | {td / tw:.2f}x | {tl / tw:.2f}x | {ew:.1e} | "
              f"{'yes' if dense else 'no'} / {'yes' if spikes else 'no'} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--part", choices=["data", "forward", "weight", "all"], default="all")
    a = ap.parse_args()
    if build.library() is None:
        raise SystemExit(f"the compiled CPU kernels are unavailable: {build.build_error()}")
    reuse_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32; median of {a.reps}\n")
    if a.part in ("data", "all"):
        data_gradient(a.reps)
    if a.part in ("forward", "all"):
        forward(a.reps)
    if a.part in ("weight", "all"):
        weight_gradient(a.reps)


if __name__ == "__main__":
    main()
