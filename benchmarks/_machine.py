"""The machine line of the benchmark scripts: the CPU kind decides what a ratio means (this project's runs have used
AMD EPYC VMs with AVX2 and no bf16 instructions, where bf16 products are emulated, AMD EPYC VMs with AVX512 and
AVX512-BF16, and an Intel Xeon VM with AMX), so it is printed with every result."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    from spikeformer.kernels.cpu import build

    return build.cpuinfo("model name") or platform.processor() or platform.machine()


def describe() -> str:
    """``"<arch>, <CPU model> (<PyTorch CPU capability>, bf16 native|emulated), <n> CPUs, torch <version>"``."""
    from spikeformer.kernels.cpu import bf16

    native = ("native, AMX" if bf16.amx() else "native") if bf16.native() else "emulated"
    kind = f"{torch.backends.cpu.get_cpu_capability()}, bf16 {native}"
    return f"{platform.machine()}, {cpu_model()} ({kind}), {os.cpu_count()} CPUs, torch {torch.__version__}"
