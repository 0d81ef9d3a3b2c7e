"""The weight gradient of 3x3 convolutions on small channels-last maps in bf16: oneDNN's backward-weights primitive
against the unfolded input times the output gradient as one GEMM (spikeformer/kernels/cpu/im2col.py), on 128 frames
of spikes (20 % nonzero) and a random output gradient. Prints medians and ratios; run with nothing else on the machine.

    python benchmarks/bench_im2col.py [--rounds 9]
"""

from __future__ import annotations

import argparse

import torch

from _machine import describe
from bench_sparse import _median_ms  # (benchmarks/ is the script's folder)
from spikeformer.engine.runtime import reuse_freed_memory
from spikeformer.kernels.cpu.im2col import unfold3x3

SHAPES = [  # frames, in channels, map side, out channels
    (128, 384, 8, 384), (128, 192, 8, 384), (128, 256, 8, 256), (128, 512, 4, 512), (128, 128, 8, 128),
    (128, 192, 16, 384),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    reuse_freed_memory()
    print(describe())
    print("| frames x C_in x H x W -> C_out | oneDNN weight grad ms | unfold + GEMM ms | ratio | max rel. diff |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    for n, c, h, co in SHAPES:
        x = (torch.rand(n, c, h, h, generator=g) < 0.2).to(torch.bfloat16).contiguous(memory_format=cl)
        w = torch.randn(co, c, 3, 3, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)
        gy = torch.randn(n, co, h, h, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)

        def onednn():
            return torch.ops.aten.convolution_backward(gy, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1,
                                                       (False, True, False))[1]

        def gemm():
            out = torch.mm(unfold3x3(x).t(), gy.permute(0, 2, 3, 1).reshape(-1, co))
            return out.view(3, 3, c, co).permute(3, 2, 0, 1)

        a, b = _median_ms(onednn, args.rounds), _median_ms(gemm, args.rounds)
        ref, got = onednn().float(), gemm().float()
        diff = ((ref - got).abs().max() / ref.abs().max()).item()
        print(f"| {n} x {c} x {h} x {h} -> {co} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
