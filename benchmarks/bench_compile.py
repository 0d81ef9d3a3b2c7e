"""Step time of ``torch.compile(model)`` against the eager model, training and inference.

    python benchmarks/bench_compile.py                            # Spikformer CIFAR 4-384, SDT CIFAR 2-512, B=32, T=4
    python benchmarks/bench_compile.py --families spikformer --backend aot_eager
    python benchmarks/bench_compile.py --quick                    # tiny smoke run (digits models, batch 2, one round)

For each family the eager model and ``torch.compile`` of a copy with the same weights (the compiled CPU kernels run
as custom operators inside the graph, ``spikeformer/kernels/cpu/ops.py``) are built in ONE process, compiled
(the compile time of the first training and inference step is printed on its own), and their steps then alternate
for ``--rounds`` rounds (training: forward, backward, AdamW step; inference: ``torch.no_grad()`` forward of the model with its BatchNorm
statistics calibrated on the batch, ``bench_families.calibrate``), so load
from elsewhere hits both alike. Medians are reported with the ratio eager / compiled (above 1: compiled is faster).
The graph breaks of one compiled forward are counted with ``torch._dynamo.explain``. Run with nothing else on the
machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_families import calibrate  # noqa: E402
import _machine  # noqa: E402  (benchmarks/ is the script's folder)

# family -> (registered model at CIFAR size, its --quick stand-in)
FAMILIES = {
    "spikformer": ("spikformer_cifar_4_384", "spikformer_digits_1_64"),
    "sdt": ("sdt_cifar_2_512", "sdt_v2_digits"),
    "spikingformer": ("spikingformer_cifar_4_384", "spikingformer_cifar_4_256"),
    "qkformer": ("qkformer_cifar_4_384", "qkformer_digits"),
    "spikingresformer": ("spikingresformer_cifar", "spikingresformer_dvsg"),
}


def _input(name: str, batch: int, T: int, g: torch.Generator):
    from spikeformer.models import get_model_info

    info = get_model_info(name)
    c, h, w = info.input_size
    if h > 32 and info.dataset != "imagenet":
        h = w = 32
    if c == 2:  # event frames
        return torch.randint(0, 3, (T, batch, c, h, w), generator=g).float(), info.num_classes
    return torch.randn(batch, c, h, w, generator=g), info.num_classes


def make_step(model, x, y, train: bool):
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        def step():
            model.eval()
            with torch.no_grad():
                model(x)
    return step


def run(family: str, a) -> dict:
    import spikeformer

    name = FAMILIES[family][1 if a.quick else 0]
    torch.manual_seed(0)
    eager = spikeformer.create_model(name, T=a.T)
    x, classes = _input(name, a.batch, a.T, torch.Generator().manual_seed(0))
    y = torch.randint(0, classes, (a.batch,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager.eval()(x)  # builds/loads the kernel library before anything is traced
    torch._dynamo.reset()
    breaks = torch._dynamo.explain(copy.deepcopy(eager).eval())(x).graph_break_count
    torch._dynamo.reset()
    out = {"model": name, "graph breaks": breaks}
    for train in (True, False):
        if not train:  # as bench_families.py: an eval model with its initial statistics barely spikes
            calibrate(eager, False, x)
        compiled_model = torch.compile(copy.deepcopy(eager), backend=a.backend, dynamic=a.dynamic)
        steps = {"eager": make_step(eager, x, y, train), "compiled": make_step(compiled_model, x, y, train)}
        t0 = time.perf_counter()
        steps["compiled"]()
        out[f"{'train' if train else 'infer'} first compiled step s"] = time.perf_counter() - t0
        times = {k: [] for k in steps}
        for r in range(a.warmup + a.rounds):
            for k, step in steps.items():
                t0 = time.perf_counter()
                step()
                if r >= a.warmup:
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        key = "train" if train else "infer"
        out[key] = med
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["spikformer", "sdt"], choices=sorted(FAMILIES))
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, ...)")
    ap.add_argument("--dynamic", action="store_true",
                    help="torch.compile(dynamic=None), PyTorch's default; without it, static shapes (dynamic=False): "
                         "after a graph break the default recompiles with symbolic shapes, which inductor cannot "
                         "always lower")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="the families' smallest models, batch 2, one round")
    a = ap.parse_args()
    a.dynamic = None if a.dynamic else False  # what torch.compile takes
    if a.quick:
        a.batch, a.T, a.rounds, a.warmup = 2, 2, 1, 1
    torch.set_num_threads(a.threads)
    print(f"command: python benchmarks/{os.path.basename(__file__)} " + " ".join(sys.argv[1:]))
    print(f"machine: {_machine.describe()}, "
          f"{a.threads} threads; backend {a.backend}, dynamic={a.dynamic}; batch {a.batch}, T={a.T}; medians of "
          f"{a.rounds} alternating rounds after {a.warmup} warm-up rounds; 1-min load average at start {os.getloadavg()[0]:.1f}")
    print()
    print("| family | model | graph breaks | train eager s/step | train compiled s/step | eager/compiled "
          "| infer eager s/batch | infer compiled s/batch | eager/compiled | first compiled train / infer step s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family in a.families:
        r = run(family, a)
        tr, inf = r["train"], r["infer"]
        print(f"| {family} | `{r['model']}` | {r['graph breaks']} | {tr['eager']:.3f} | {tr['compiled']:.3f} "
              f"| {tr['eager'] / tr['compiled']:.2f}x | {inf['eager']:.3f} | {inf['compiled']:.3f} "
              f"| {inf['eager'] / inf['compiled']:.2f}x | {r['train first compiled step s']:.0f} / "
              f"{r['infer first compiled step s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
