"""Spikformer on one GPU: spikeformer (Triton kernels) vs SpikingJelly 2.0, training and inference, in one process.

    python benchmarks/bench_gpu.py                       # CIFAR 4-384 (B=64, T=4, 32px) and ImageNet 8-384 (B=32, T=4,
                                                         # 224px) on cuda:0, bf16 autocast
    python benchmarks/bench_gpu.py --precision fp32      # the same in fp32 (fp16: fp16 autocast)
    python benchmarks/bench_gpu.py --config cifar --steps 50
    python benchmarks/bench_gpu.py --dry-run             # CPU, tiny sizes, the same code path (a smoke test)

Both models are built in this process at the same precision (autocast dtype, same optimizer: SGD with momentum)
and timed alternately, several rounds, so a burst of load hits both alike; the median step time over all rounds is
reported with the peak GPU memory of each phase (``torch.cuda.max_memory_allocated``) and the ratios
SpikingJelly / spikeformer. SpikingJelly's model is ``spikingjelly.activation_based.model.spikformer`` (its
multi-step LIF picks its fastest backend on CUDA itself); with an older SpikingJelly without that module, its
``neuron.LIFNode`` with ``backend="triton"`` (else ``"cupy"``) in our network shape is used instead.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Config:
    name: str
    variant: str      # our Spikformer variant ("cifar": the CIFAR stem, "imagenet")
    batch: int
    T: int
    img: int
    classes: int
    depth: int
    dim: int
    heads: int
    patch: int        # SpikingJelly's patch size for its generic Spikformer


CONFIGS = {
    # the paper configs: spikeformer's spikformer_cifar_4_384 / spikformer_8_384, SpikingJelly's spikformer_cifar10
    "cifar": Config("Spikformer CIFAR 4-384", "cifar", 64, 4, 32, 10, 4, 384, 12, 4),
    "imagenet": Config("Spikformer ImageNet 8-384", "imagenet", 32, 4, 224, 1000, 8, 384, 12, 16),
}
DRY = dict(batch=2, T=2, img=32, depth=1, dim=32, heads=2)  # --dry-run: tiny, the same code
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def build_ours(cfg: Config, device: torch.device, **kw_neuron) -> torch.nn.Module:
    from spikeformer.models.spikformer import Spikformer

    if device.type == "cuda":
        from spikeformer.kernels import triton as _triton  # registers the Triton kernels for CUDA  # noqa: F401
    return Spikformer(cfg.variant, num_classes=cfg.classes, embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads,
                      T=cfg.T, **kw_neuron).to(device)


def build_sj(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, str]:
    """SpikingJelly's Spikformer and a description of what was built."""
    try:
        from spikingjelly.activation_based.model import spikformer as sjs
    except ImportError:
        sjs = None
    if sjs is not None:  # spikformer_cifar10 is this constructor with the CIFAR config
        model = sjs.Spikformer(T=cfg.T, img_size_h=cfg.img, img_size_w=cfg.img, patch_size=cfg.patch,
                               num_classes=cfg.classes, embed_dims=cfg.dim, num_heads=cfg.heads, depths=cfg.depth)
        return model.to(device), "spikingjelly.activation_based.model.spikformer"
    from spikingjelly.activation_based import neuron

    backend = "torch"
    if device.type == "cuda":
        backend = "triton" if "triton" in neuron.LIFNode(step_mode="m").supported_backends else "cupy"

    def lif(**_):
        return neuron.LIFNode(tau=2.0, detach_reset=True, step_mode="m", backend=backend)

    model = build_ours(cfg, device, neuron=lif)
    return model, f"spikeformer network with spikingjelly LIFNode(backend={backend!r})"


def _reset_sj(model: torch.nn.Module) -> None:
    from spikingjelly.activation_based import functional as sjf

    sjf.reset_net(model)


def _logits(out: torch.Tensor, batch: int) -> torch.Tensor:
    # SpikingJelly's model returns per-step logits [T, B, K]; ours [B, K]
    return out.mean(0) if out.dim() == 3 and out.shape[1] == batch else out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model's training step and inference step at a given precision."""

    def __init__(self, model, is_sj: bool, device, dtype: Optional[torch.dtype], x, y):
        self.model, self.is_sj, self.device, self.dtype, self.x, self.y = model, is_sj, device, dtype, x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def train_step(self) -> float:
        self.model.train()
        with self._autocast():
            loss = F.cross_entropy(_logits(self.model(self.x), self.x.shape[0]).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.is_sj:
            _reset_sj(self.model)
        return float(loss.detach())

    def infer_step(self) -> None:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            self.model(self.x)
        if self.is_sj:
            _reset_sj(self.model)


def measure(fn: Callable[[], object], device, steps: int) -> tuple[list[float], Optional[float]]:
    """Wall time of each of ``steps`` calls (synchronised) and the peak GPU memory over them (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return times, peak


def run_config(cfg: Config, device, dtype, steps: int, warmup: int, rounds: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(cfg.batch, 3, cfg.img, cfg.img, device=device)
    y = torch.randint(0, cfg.classes, (cfg.batch,), device=device)
    ours = build_ours(cfg, device)
    sj, sj_desc = build_sj(cfg, device)
    runners = {"spikeformer": Runner(ours, False, device, dtype, x, y),
               "spikingjelly": Runner(sj, True, device, dtype, x, y)}
    res = {name: {"train": [], "infer": [], "train_mem": 0.0, "infer_mem": 0.0} for name in runners}
    for r in runners.values():  # warm up: kernels compiled / autotuned, allocator primed
        for _ in range(warmup):
            r.train_step()
            r.infer_step()
    for _ in range(rounds):  # alternate, so a burst of load hits both
        for name, r in runners.items():
            for phase, fn in (("train", r.train_step), ("infer", r.infer_step)):
                gc.collect()
                times, peak = measure(fn, device, steps)
                res[name][phase] += times
                if peak is not None:
                    res[name][phase + "_mem"] = max(res[name][phase + "_mem"], peak)
    return {"sj": sj_desc, "res": res}


def report(cfg: Config, out: dict, precision: str) -> list[str]:
    res = out["res"]
    med = {n: {p: statistics.median(res[n][p]) for p in ("train", "infer")} for n in res}
    lines = [f"{cfg.name} (depth {cfg.depth}, dim {cfg.dim})  B={cfg.batch} T={cfg.T} {cfg.img}px  "
             f"precision={precision}  SpikingJelly: {out['sj']}"]
    for phase in ("train", "infer"):
        o, s = med["spikeformer"][phase], med["spikingjelly"][phase]
        mo, ms = res["spikeformer"][phase + "_mem"], res["spikingjelly"][phase + "_mem"]
        mem = (f"  peak MiB ours {mo:.0f} / SJ {ms:.0f} (ratio SJ/ours {ms / mo:.2f})" if mo
               else "  peak GPU memory: n/a")
        lines.append(f"  {phase:5s} ms/step ours {o * 1e3:8.2f}  SJ {s * 1e3:8.2f}  speed-up SJ/ours {s / o:5.2f}{mem}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--precision", choices=list(PRECISIONS), default="bf16")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per phase and round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 step: checks the code path runs")
    a = ap.parse_args(argv)
    print("command:", " ".join(shlex.quote(s) for s in [sys.executable, *sys.argv]) if argv is None
          else "bench_gpu.py " + " ".join(argv))
    names = list(CONFIGS) if a.config == "all" else [a.config]
    if a.dry_run:
        device, dtype, steps, warmup, rounds = torch.device("cpu"), None, 1, 1, 1
    else:
        device = torch.device(a.device)
        if device.type != "cuda" or not torch.cuda.is_available():
            print("no CUDA device: run on a machine with a GPU, or pass --dry-run", file=sys.stderr)
            return 2
        dtype, steps, warmup, rounds = PRECISIONS[a.precision], a.steps, a.warmup, a.rounds
        print("device:", torch.cuda.get_device_name(device), "torch", torch.__version__)
    for name in names:
        cfg = CONFIGS[name]
        if a.dry_run:
            cfg = Config(**{**cfg.__dict__, **DRY})
        out = run_config(cfg, device, dtype, steps, warmup, rounds)
        print("\n".join(report(cfg, out, "fp32" if dtype is None else a.precision)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
