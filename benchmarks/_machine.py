"""The machine line of the benchmark scripts: the CPU kind decides what a ratio means (this project's runs have used
AMD EPYC VMs of two kinds: AVX2 without bf16 instructions, where bf16 products are emulated, and AVX512 with
AVX512-BF16), so it is printed with every result."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """``"<arch>, <CPU model> (<PyTorch CPU capability>, bf16 native|emulated), <n> CPUs, torch <version>"``."""
    from spikeformer.kernels.cpu import bf16

    kind = f"{torch.backends.cpu.get_cpu_capability()}, bf16 {'native' if bf16.native() else 'emulated'}"
    return f"{platform.machine()}, {cpu_model()} ({kind}), {os.cpu_count()} CPUs, torch {torch.__version__}"
