"""Training and inference speed and peak memory against SpikingJelly 2.0's models of the same architecture.

    python benchmarks/bench_families.py                          # Spikformer CIFAR 4-384 and SDT CIFAR 2-512
    python benchmarks/bench_families.py --families sdt --rounds 5
    python benchmarks/bench_families.py --quick                  # tiny smoke run (batch 2, one round)

Speed: for each family every variant is built in ONE process -- SpikingJelly fp32, SpikingJelly under bf16 autocast,
ours exact fp32 (``numerics="exact"``, the official operations), ours fast fp32 (the default) and ours fast under
bf16 autocast -- and their steps alternate for ``--rounds`` rounds (training: forward, backward, AdamW step; inference:
``torch.no_grad()`` forward in eval mode, after each model's BatchNorm running statistics are set from the batch, see
``calibrate``), so load from elsewhere hits every variant alike; medians are reported with the ratio to
SpikingJelly at the same precision, with the median minor page faults of the timed steps (a step that grows the
heap touches fresh pages, about 10-16 us each on the benchmark VM: the first few steps of a variant pay most of them,
so ``--warmup`` decides how much of that start-up cost the medians include). Memory: every training variant runs
``--mem-steps`` steps in its own subprocess and reports its peak RSS (VmHWM); ratios are to SpikingJelly at the same
precision. Run with nothing else on the machine. ``spikeformer train`` keeps freed memory for reuse on CPU (``reuse_memory``); the setting is process-wide,
so SpikingJelly gets it too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import _machine  # noqa: E402  (benchmarks/ is the script's folder)

# family -> (our registered model, SpikingJelly builder, input (C, H, W), classes)
FAMILIES = {
    "spikformer": ("spikformer_cifar_4_384", "spikformer", (3, 32, 32), 10),
    "sdt": ("sdt_cifar_2_512", "sdt", (3, 32, 32), 10),
    "qkformer": ("qkformer_10_384", "qkformer", (3, 32, 32), 1000),
}


def build_sj(kind: str, T: int, classes: int):
    from spikingjelly.activation_based.model import spike_driven_transformer as sdt
    from spikingjelly.activation_based.model import spikformer

    if kind == "spikformer":
        return spikformer.spikformer_cifar10(T=T, num_classes=classes)
    if kind == "sdt":  # the official CIFAR 2-512 configuration (pooling "0011")
        return sdt.SpikeDrivenTransformer(T=T, in_channels=3, num_classes=classes, embed_dims=512, num_heads=8,
                                          depths=2, mlp_ratio=4.0, pooling_stat="0011")
    if kind == "qkformer":
        from spikingjelly.activation_based.model import qkformer

        return qkformer.qkformer_10_384(T=T, num_classes=classes)
    raise ValueError(kind)


def build_ours(name: str, T: int, numerics: str):
    import spikeformer

    return spikeformer.create_model(name, T=T, numerics=numerics)


def variants(family: str, T: int):
    name, sj_kind, _, classes = FAMILIES[family]
    torch.manual_seed(0)
    sj = build_sj(sj_kind, T, classes)
    torch.manual_seed(0)
    exact = build_ours(name, T, "exact")
    torch.manual_seed(0)
    fast = build_ours(name, T, "fast")
    # (label, model, bf16, is_sj)
    return [("SJ fp32", sj, False, True), ("SJ bf16", sj, True, True), ("ours exact fp32", exact, False, False),
            ("ours fast fp32", fast, False, False), ("ours fast bf16", fast, True, False)]


def _logits(out: torch.Tensor, is_sj: bool) -> torch.Tensor:
    return out.mean(0) if is_sj and out.dim() == 3 else out  # SJ's Spikformer returns [T, B, K]


def make_step(model, bf16: bool, is_sj: bool, x, y, train: bool, optimizer: str = "fused"):
    from spikingjelly.activation_based import functional as sjf

    if train:
        model.train()
        # the trainer's AdamW (engine/train.py: fused where the parameters allow it), the same for every variant;
        # --optimizer loop: PyTorch's default loop of per-tensor operations on CPU
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=optimizer == "fused")

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(_logits(model(x), is_sj).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if is_sj:
                sjf.reset_net(model)
    else:
        def step():
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                _logits(model(x), is_sj)
            if is_sj:
                sjf.reset_net(model)
    return step


def calibrate(model, is_sj: bool, x) -> None:
    """BatchNorm running statistics of the batch ``x`` (cumulative averages over two train-mode passes), so that an
    untrained model in eval mode spikes as a trained one does; with the initial statistics (mean 0, variance 1) most
    of its layers stay silent and sparse kernels would time a network with nothing to do."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
            if is_sj:
                from spikingjelly.activation_based import functional as sjf

                sjf.reset_net(model)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def speed(family: str, a, train: bool) -> dict:
    _, _, (C, H, W), classes = FAMILIES[family]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(a.batch, C, H, W, generator=g), torch.randint(0, classes, (a.batch,), generator=g)
    chosen = [(label, m, bf16, is_sj) for label, m, bf16, is_sj in variants(family, a.T)
              if label.split()[-1] in a.precisions]
    if not train:
        for model, is_sj in {id(m): (m, is_sj) for _, m, _, is_sj in chosen}.values():
            calibrate(model, is_sj, x)
    steps = [(label, make_step(m, bf16, is_sj, x, y, train, a.optimizer)) for label, m, bf16, is_sj in chosen]
    times = {label: [] for label, _ in steps}
    faults = {label: [] for label, _ in steps}
    for r in range(a.warmup + a.rounds):
        for label, step in (steps[::-1] if a.alternate and r % 2 else steps):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step()
            if r >= a.warmup:
                times[label].append(time.perf_counter() - t0)
                faults[label].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return ({k: statistics.median(v) for k, v in times.items()},
            {k: statistics.median(v) for k, v in faults.items()})


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child_memory(a) -> dict:
    from spikeformer.engine.runtime import reuse_freed_memory

    torch.set_num_threads(a.threads)
    reuse_freed_memory()
    name, sj_kind, (C, H, W), classes = FAMILIES[a.family]
    torch.manual_seed(0)
    is_sj = a.variant.startswith("SJ")
    if is_sj:
        model = build_sj(sj_kind, a.T, classes)
    else:
        model = build_ours(name, a.T, "exact" if "exact" in a.variant else "fast")
    x, y = torch.randn(a.batch, C, H, W), torch.randint(0, classes, (a.batch,))
    step = make_step(model, "bf16" in a.variant, is_sj, x, y, True, a.optimizer)
    for _ in range(a.mem_steps):
        step()
    return {"peak_rss_mb": _peak_rss_mb()}


def memory(family: str, a) -> dict:
    out = {}
    for v in ("SJ fp32", "SJ bf16", "ours exact fp32", "ours fast fp32", "ours fast bf16"):
        if v.split()[-1] not in a.precisions:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--family", family, "--variant", v,
               "--batch", str(a.batch), "--T", str(a.T), "--threads", str(a.threads), "--mem-steps", str(a.mem_steps),
               "--optimizer", a.optimizer]
        p = subprocess.run(cmd, capture_output=True, text=True)
        out[v] = json.loads(p.stdout.strip().splitlines()[-1])["peak_rss_mb"] if p.returncode == 0 else float("nan")
        if p.returncode != 0:
            print(p.stderr[-2000:], file=sys.stderr)
    return out


def _same_precision_sj(label: str) -> str:
    return "SJ bf16" if "bf16" in label else "SJ fp32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["spikformer", "sdt"], choices=sorted(FAMILIES))
    ap.add_argument("--alternate", action="store_true",
                    help="reverse the variants' order every other round (default: SJ, exact, fast in every round)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--optimizer", default="fused", choices=["fused", "loop"],
                    help="AdamW of every variant: fused (as `spikeformer train` builds it) or PyTorch's CPU default loop")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="on CPUs without native bf16 (no AVX512-BF16/AMX) SpikingJelly's bf16 steps take PyTorch's "
                         "scalar bf16 path (minutes per step at batch 32); ours compute in fp32 there "
                         "(kernels/cpu/bf16.py)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--family", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child_memory(a)))
        return
    if a.quick:
        a.batch, a.rounds, a.warmup, a.mem_steps = 2, 1, 1, 1
    torch.set_num_threads(a.threads)
    from spikeformer.engine.runtime import reuse_freed_memory

    reuse_freed_memory()
    print(f"command: python benchmarks/{os.path.basename(__file__)} " + " ".join(sys.argv[1:]))
    print(f"machine: {_machine.describe()}, "
          f"{a.threads} threads; batch {a.batch}, T={a.T}; medians of {a.rounds} alternating rounds after {a.warmup} "
          f"warm-up rounds, all variants in one process"
          f"{', the order reversed every other round' if a.alternate else ''}; {a.optimizer} AdamW; "
          f"1-min load average at start {os.getloadavg()[0]:.1f}")
    for family in a.families:
        name = FAMILIES[family][0]
        (tr, tr_faults), (inf, inf_faults) = speed(family, a, True), speed(family, a, False)
        mem = memory(family, a)
        print()
        print(f"### {family}: ours `{name}` against SpikingJelly 2.0's model of the same configuration")
        print()
        print("| variant | train s/step | vs SJ same precision | infer s/batch | vs SJ same precision | peak RSS MB "
              "| RSS vs SJ same precision | page faults per train / infer step |")
        print("|---|---|---|---|---|---|---|---|")
        for v in tr:
            sj = _same_precision_sj(v)
            print(f"| {v} | {tr[v]:.3f} | {tr[sj] / tr[v]:.2f}x | {inf[v]:.3f} | {inf[sj] / inf[v]:.2f}x | "
                  f"{mem[v]:.0f} | {mem[v] / mem[sj]:.2f} | {tr_faults[v]:.0f} / {inf_faults[v]:.0f} |", flush=True)
    print()
    print(f"1-min load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
