"""Spikformer training/inference speed and memory: spikeformer vs SpikingJelly 2.0, measured in one run.

    python benchmarks/bench_spikformer.py                 # full run (CIFAR-10 Spikformer-4-384, batch 32, T=4)
    python benchmarks/bench_spikformer.py --quick         # small smoke run
    python benchmarks/bench_spikformer.py --baseline DIR  # also time the package in DIR/spikeformer ("base",
                                                          # e.g. an export of the previous commit) in the same run

Each measured configuration runs in its own subprocess (clean peak RSS, no allocator reuse between configs);
configurations are interleaved over ``--rounds`` rounds and the median step time over all rounds is reported,
so a burst of load from other processes hits every configuration alike. GEMM throughput (fp32, bf16) is measured
in the same run, before and after the model rounds, and the FLOPs of one training step are counted with
``torch.utils.flop_counter`` on our model (the two models are the same architecture).
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

import _machine  # benchmarks/ is the script's folder

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ----------------------------------------------------------------------------------------------------- child side
def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry over the parent's high-water mark across
    # fork+exec on Linux
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(impl: str, T: int, ckpt: bool, model_name: str, fastlin: bool = False):
    if impl == "sj":
        from spikingjelly.activation_based.model import spikformer as sj_spikformer

        model = sj_spikformer.spikformer_cifar10(T=T)
        return model, lambda out: out.mean(0)  # SJ returns [T, B, classes]
    import spikeformer
    from spikeformer.neurons import _kernels
    from spikeformer.neurons import functional as NF

    if impl in ("ours", "ours-torchkernel") and not ckpt:  # what `spikeformer train` applies (reuse_memory)
        from spikeformer.engine.runtime import reuse_freed_memory

        reuse_freed_memory()

    if impl == "base":  # the previous state, put first on PYTHONPATH by the parent
        assert os.path.dirname(os.path.dirname(spikeformer.__file__)) != ROOT, spikeformer.__file__
    if impl == "ours-ref":  # "before": the step-by-step reference neuron kernel
        _kernels.register_kernel("cpu", lambda x, k, v0, spec, sur: NF._MultiStepNeuron.apply(x, k, v0, spec, sur))
    kw = dict(T=T)
    if ckpt:
        kw["checkpoint_blocks"] = True
    if impl != "base":  # the package before numerics existed built exact models and switched with fast_kernels
        kw["numerics"] = "fast" if fastlin else "exact"
    model = spikeformer.create_model(model_name, **kw)
    if fastlin and impl == "base":
        from spikeformer.layers.linear import use_fast_kernels

        use_fast_kernels(model)
    return model, lambda out: out


def child(a) -> dict:
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.impl == "ours-torchkernel":  # the pure-PyTorch neuron kernel instead of the compiled one
        os.environ["SPIKEFORMER_NATIVE"] = "0"
    model, head = _build(a.impl, a.T, a.ckpt, a.model, a.fastlin)
    C, H = (1, 16) if "digits" in a.model else (3, 32)
    x = torch.randn(a.batch, C, H, H)
    y = torch.randint(0, 10, (a.batch,))
    bf16 = a.dtype == "bf16"
    times = []
    if a.mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(head(model(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if a.impl == "sj":
                from spikingjelly.activation_based import functional as sjf

                sjf.reset_net(model)
    else:
        model.eval()

        def step():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                head(model(x))
            if a.impl == "sj":
                from spikingjelly.activation_based import functional as sjf

                sjf.reset_net(model)

    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    rss_mb = _peak_rss_mb()
    return {"times": times, "peak_rss_mb": rss_mb}


# ---------------------------------------------------------------------------------------------------- parent side
def gemm_gflops(dtype: torch.dtype, threads: int, n: int = 2048, reps: int = 5, onednn: bool = False) -> float:
    """``torch.mm`` throughput (the BLAS; for bf16 that is oneDNN), or oneDNN's fp32 matmul with ``onednn``."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    if onednn:
        from spikeformer.neurons._kernels_linear import _mm

        f = lambda: _mm(a, b)  # noqa: E731
    else:
        f = lambda: a @ b  # noqa: E731
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / min(ts) / 1e9


def step_flops(model_name: str, batch: int, T: int) -> float:
    """FLOPs of one training step (forward + backward; the optimizer's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    import spikeformer
    from spikeformer.neurons import _kernels_linear

    dnnl, _kernels_linear._dnnl = _kernels_linear._dnnl, None  # the counter sees aten ops only
    try:
        torch.manual_seed(0)
        model = spikeformer.create_model(model_name, T=T)
        C, H = (1, 16) if "digits" in model_name else (3, 32)
        x, y = torch.randn(batch, C, H, H), torch.randint(0, 10, (batch,))
        with FlopCounterMode(display=False) as fc:
            torch.nn.functional.cross_entropy(model(x), y).backward()
    finally:
        _kernels_linear._dnnl = dnnl
    return float(fc.get_total_flops())


def run_child(cfg: dict, common: dict) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--child"]
    for k, v in {**common, **cfg}.items():
        if k == "baseline":
            continue
        if isinstance(v, bool):
            if v:
                args.append(f"--{k}")
        else:
            args += [f"--{k}", str(v)]
    path = ROOT if cfg.get("impl") != "base" else os.path.abspath(common["baseline"]) + os.pathsep + ROOT
    env = dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def label(c: dict) -> str:
    return (f"{c['impl']}/{c['mode']}/{c['dtype']}" + ("/ckpt" if c.get("ckpt") else "")
            + ("/fast" if c.get("fastlin") else "") + f"/T{c['T']}")


def main(a) -> None:
    threads = a.threads
    load0 = os.getloadavg()
    gemm = {"fp32": [gemm_gflops(torch.float32, threads)], "bf16": [gemm_gflops(torch.bfloat16, threads)],
            "fp32-onednn": [gemm_gflops(torch.float32, threads, onednn=True)]}
    flops = step_flops(a.model, a.batch, a.T)

    speed_cfgs = []
    for mode in ("train", "infer"):
        for dtype in ("fp32", "bf16"):
            for impl in ("sj", "ours") + (("base",) if a.baseline else ()):
                speed_cfgs.append(dict(impl=impl, mode=mode, dtype=dtype, T=a.T))
            if dtype == "fp32":  # the default of `spikeformer train`: oneDNN Linear, compiled BatchNorm
                speed_cfgs.append(dict(impl="ours", mode=mode, dtype=dtype, T=a.T, fastlin=True))
            if mode == "train":  # the lever of the compiled neuron kernel alone
                speed_cfgs.append(dict(impl="ours-torchkernel", mode=mode, dtype=dtype, T=a.T))
    speed_cfgs.append(dict(impl="ours", mode="train", dtype="fp32", T=a.T, ckpt=True))
    if a.with_ref:
        speed_cfgs.append(dict(impl="ours-ref", mode="train", dtype="fp32", T=a.T))

    # two warm-up steps: the first creates the oneDNN primitives, the second the optimizer state (both slow for
    # every implementation); the timed steps are the steady state a training run spends its time in
    common = dict(batch=a.batch, steps=a.steps, warmup=a.warmup_steps, threads=threads, model=a.model,
                  baseline=a.baseline)
    loads = []
    results = {label(c): [] for c in speed_cfgs}
    rss = {}
    for r in range(a.rounds):
        for c in speed_cfgs:
            res = run_child(c, common)
            print(f"round {r} {label(c):28s} {res}", file=sys.stderr, flush=True)
            if "error" in res:
                results[label(c)] = res
                continue
            if isinstance(results[label(c)], list):
                results[label(c)].extend(res["times"])
            rss[label(c)] = max(rss.get(label(c), 0.0), res["peak_rss_mb"])
        loads.append(os.getloadavg()[0])
        gemm["fp32"].append(gemm_gflops(torch.float32, threads))
        gemm["bf16"].append(gemm_gflops(torch.bfloat16, threads))
        gemm["fp32-onednn"].append(gemm_gflops(torch.float32, threads, onednn=True))

    # peak memory against T (training, fp32 and bf16), one step each, smaller batch to fit the shared machine
    mem = {}
    for T in a.mem_T:
        for impl, dtype, ckpt in (("sj", "fp32", False), ("ours", "fp32", False), ("ours", "bf16", False),
                                  ("ours", "fp32", True)):
            c = dict(impl=impl, mode="train", dtype=dtype, T=T, ckpt=ckpt)
            res = run_child(c, dict(common, batch=a.mem_batch, steps=1, warmup=0))
            print(f"mem {label(c):28s} {res}", file=sys.stderr, flush=True)
            mem[label(c)] = res.get("peak_rss_mb", res.get("error"))

    load1 = os.getloadavg()
    g32, g16 = statistics.median(gemm["fp32"]), statistics.median(gemm["bf16"])
    med = {k: (statistics.median(v) if isinstance(v, list) and v else None) for k, v in results.items()}

    lines = []
    p = lines.append
    p(f"command: python benchmarks/{os.path.basename(__file__)} " + " ".join(sys.argv[1:]))
    p(f"machine: {_machine.describe()}, "
      f"{threads} threads; 1-min load average at start {load0[0]:.1f}, after each round "
      + ", ".join(f"{x:.1f}" for x in loads) + f", at end {load1[0]:.1f}")
    p(f"model: {a.model}, batch {a.batch}, T={a.T}; {a.rounds} interleaved rounds x {a.steps} timed steps "
      f"(after {a.warmup_steps} warm-up steps) per configuration, each configuration in its own subprocess; medians")
    p(f"GEMM throughput (2048^3, median of {len(gemm['fp32'])} probes spread over the run): fp32 {g32:.0f} GFLOP/s "
      f"(range {min(gemm['fp32']):.0f}-{max(gemm['fp32']):.0f}), bf16 {g16:.0f} GFLOP/s "
      f"(range {min(gemm['bf16']):.0f}-{max(gemm['bf16']):.0f}); fp32 through oneDNN "
      f"{statistics.median(gemm['fp32-onednn']):.0f} GFLOP/s")
    g32d = statistics.median(gemm["fp32-onednn"])
    p(f"FLOPs of one training step (forward+backward): {flops / 1e9:.0f} GFLOP -> compute bound "
      f"{flops / g32 / 1e9:.2f} s (fp32, torch.mm), {flops / g32d / 1e9:.2f} s (fp32, oneDNN), "
      f"{flops / g16 / 1e9:.2f} s (bf16)")
    p("")
    p("| configuration | median s/step | all step times | images/s | peak RSS MB | speed-up vs SJ same mode+dtype "
      "| vs SJ fp32 | RSS vs SJ fp32 | vs base |")
    p("|---|---|---|---|---|---|---|---|---|")
    for c in speed_cfgs:
        k = label(c)
        if med[k] is None:
            p(f"| {k} | error: {results[k].get('error') if isinstance(results[k], dict) else 'none'} | | | | | | | |")
            continue
        sj_same = med.get(label(dict(c, impl="sj", ckpt=False, fastlin=False)))
        sj32 = med.get(label(dict(c, impl="sj", dtype="fp32", ckpt=False, fastlin=False)))
        rss32 = rss.get(label(dict(c, impl="sj", dtype="fp32", ckpt=False, fastlin=False)))
        base = (med.get(label(dict(c, impl="base", fastlin=False)))
                if c["impl"] == "ours" and not c.get("ckpt") else None)
        p(f"| {k} | {med[k]:.3f} | " + " ".join(f"{t:.2f}" for t in results[k]) + f" | {a.batch / med[k]:.1f} | {rss[k]:.0f} | "
          + (f"{sj_same / med[k]:.2f}x" if sj_same else "-") + " | "
          + (f"{sj32 / med[k]:.2f}x" if sj32 else "-") + " | "
          + (f"{rss[k] / rss32:.2f}" if rss32 else "-") + " | "
          + (f"{base / med[k]:.2f}x" if base else "-") + " |")
    ours16 = med.get(label(dict(impl="ours", mode="train", dtype="bf16", T=a.T)))
    if ours16:
        p("")
        p(f"bf16 training step / bf16 compute bound: {ours16 / (flops / g16 / 1e9):.2f}x; "
          f"fp32 training step / fp32 compute bound: "
          f"{med[label(dict(impl='ours', mode='train', dtype='fp32', T=a.T))] / (flops / g32 / 1e9):.2f}x")
    p("")
    p(f"peak RSS (MB) of one training step against T, batch {a.mem_batch}:")
    p("")
    p("| configuration | " + " | ".join(f"T={T}" for T in a.mem_T) + " |")
    p("|---|" + "---|" * len(a.mem_T))
    for impl, dtype, ckpt in (("sj", "fp32", False), ("ours", "fp32", False), ("ours", "bf16", False),
                              ("ours", "fp32", True)):
        name = f"{impl}/{dtype}" + ("/ckpt" if ckpt else "")
        vals = []
        for T in a.mem_T:
            v = mem[label(dict(impl=impl, mode="train", dtype=dtype, T=T, ckpt=ckpt))]
            vals.append(f"{v:.0f}" if isinstance(v, float) else str(v))
        p(f"| {name} | " + " | ".join(vals) + " |")
    print("\n".join(lines))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="spikformer_cifar_4_384")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--mem-T", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before the timed ones, every "
                    "configuration (more lets glibc's heap settle; the recorded runs 1-7 used 2)")
    ap.add_argument("--mem-batch", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--baseline", default=None, help="directory holding a previous `spikeformer` package to time "
                    "against the current one in the same run (configurations named 'base')")
    ap.add_argument("--with-ref", action="store_true", help="also time the step-by-step reference neuron loop")
    # child-only
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fastlin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.steps, a.rounds, a.mem_T, a.mem_batch = 2, 1, 1, [2, 4], 2
    return a


if __name__ == "__main__":
    args = parse()
    if args.child:
        print(json.dumps(child(args)))
    else:
        main(args)
