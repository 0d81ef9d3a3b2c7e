"""Spike agreement of a bf16-autocast forward against the fp32 forward of the same weights.

    python benchmarks/bench_bf16_agreement.py                     # trains digits weights (fp32, ~1 min) first
    python benchmarks/bench_bf16_agreement.py --weights RUN/best.safetensors
    python benchmarks/bench_bf16_agreement.py --out DIR           # train into / reuse DIR (DIR/best.safetensors)

Every neuron layer's output is recorded (by a forward hook, or at the fused BatchNorm -> neuron call, so the fused
kernel runs as it does in training and inference); agreement = the fraction of equal elements over all spike sites
of that layer (all: over every site of every layer). Two measurements per layer:

* end to end: the bf16 forward runs on its own, so a flip upstream propagates;
* local: during the bf16 forward every neuron's output is replaced by the fp32 forward's spikes after being
  recorded, so each layer sees exactly the fp32 inputs and its disagreement is only the one it causes itself.

Besides the package's own bf16 path ("package"), variants patched in this script only (nothing in the package
changes) locate where the disagreement comes from:

* ``attn-bf16``: spike_attention as before the fix (the Q K^T V products in autocast's bf16, bf16 output);
* ``attn-fp32``: spike_attention always in fp32 under autocast (exact like the package's checked bf16 products);
* ``conv0-fp32``: the first (encoding) convolution, on real-valued images, kept in fp32;
* ``bn-fp32``: every BatchNorm gets its input upcast to fp32, so the neurons get an fp32 (not bf16-rounded) input;
* ``gemm-fp32out``: every Linear/conv takes bf16-rounded operands but returns its exact fp32 sum (emulated in
  fp32): what a bf16 GEMM with an fp32 output would give;
* ``gemm-bf16w-only``: Linear/conv in fp32 with only the weights rounded to bf16 (inputs are exact spikes anyway);
* ``head-fp32``: the classifier head in fp32 (no effect on spikes, only on the logits);
* ``sps-bn-fp32``: like ``bn-fp32`` for the tokenizer's (SPS) BatchNorm2d layers only;
* ``conv0+spsbn-fp32``, ``conv0+bn-fp32``: the combinations; ``conv01-fp32``: the first two convolutions in fp32.

These variants located the loss before the package changed: Spikformer now keeps its first two stem stages in fp32
under autocast (``models/spikformer.py``), so ``conv0-fp32`` and ``conv01-fp32`` coincide with ``package`` there.

* ``fp64``: not bf16 at all, the whole forward in fp64: the floor set by the network's own sensitivity (how far a
  merely different rounding of the same maths moves the spikes).

Models: ``spikformer_digits_1_64`` (trained, all 360 test digits, eval mode) and ``spikformer_cifar_4_384`` (random
init with BatchNorm statistics calibrated on the inputs, 16 random 32x32 images, eval mode). Single-threaded by
default (``--threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import spikeformer.layers.attention as attention_mod  # noqa: E402
import spikeformer.models.spikformer as spikformer_module  # noqa: E402
from spikeformer.models import create_model  # noqa: E402
from spikeformer.neurons import MALIF, BaseNode  # noqa: E402

NEURON_TYPES = (BaseNode, MALIF)
BF16 = torch.bfloat16


# ------------------------------------------------------------------------------------------------ measurement
def neuron_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NEURON_TYPES)]


@torch.no_grad()
def forward(model: nn.Module, x: torch.Tensor, bf16: bool, force: dict | None = None):
    """One forward; returns fp32 logits and ``{layer: spikes}`` (the layer's output as computed, fp32).

    ``force`` ({layer: spikes}): after recording, each neuron's output is replaced by these spikes, so every layer
    gets the inputs of the forward that produced ``force`` (local, teacher-forced measurement)."""
    rec: dict[str, torch.Tensor] = {}
    hooks = []
    names = {}
    for name, m in neuron_layers(model):
        names[id(m)] = name

        def hook(mod, inp, out, name=name):
            if name in rec:
                raise RuntimeError(f"neuron {name} is called twice in one forward")
            rec[name] = out.detach().float()
            if force is not None:
                return force[name].to(out.dtype)
            return None

        hooks.append(m.register_forward_hook(hook))

    # A hooked neuron is never fused with its BatchNorm (layers/fused_bn.py), so the BatchNorm -> neuron pairs that
    # Spikformer runs through bn_neuron / linear_bn_neuron are recorded at that call instead, with the neuron's hook
    # set aside: the fused kernel then runs exactly as in training and inference.
    reals = {n: getattr(spikformer_module, n) for n in ("bn_neuron", "linear_bn_neuron")}

    def recorded(real, neuron_arg):
        def call(*args, **kwargs):
            neuron = args[neuron_arg]
            saved = neuron._forward_hooks.copy()
            neuron._forward_hooks.clear()
            try:
                out = real(*args, **kwargs)
            finally:
                neuron._forward_hooks.update(saved)
            for h in saved.values():
                replaced = h(neuron, (args[neuron_arg + 1],), out)
                out = out if replaced is None else replaced
            return out

        return call

    spikformer_module.bn_neuron = recorded(reals["bn_neuron"], 1)
    spikformer_module.linear_bn_neuron = recorded(reals["linear_bn_neuron"], 2)
    try:
        ctx = torch.autocast("cpu", dtype=BF16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = model(x)
    finally:
        for n, f in reals.items():
            setattr(spikformer_module, n, f)
        for h in hooks:
            h.remove()
    return logits.float(), rec


class Tally:
    """Equal / total / fp32-spike counts per layer, accumulated over batches."""

    def __init__(self):
        self.eq: dict[str, int] = {}
        self.n: dict[str, int] = {}
        self.fired: dict[str, int] = {}

    def add(self, ref: dict, other: dict) -> None:
        for k, a in ref.items():
            b = other[k]
            self.eq[k] = self.eq.get(k, 0) + int((a == b).sum())
            self.n[k] = self.n.get(k, 0) + a.numel()
            self.fired[k] = self.fired.get(k, 0) + int((a != 0).sum())

    def layer(self, k: str) -> float:
        return 100.0 * self.eq[k] / self.n[k]

    def overall(self) -> float:
        return 100.0 * sum(self.eq.values()) / sum(self.n.values())


def measure(model: nn.Module, batches, variant: str) -> dict:
    """fp32 vs bf16 (``variant``) over ``batches`` of (x, y): end-to-end and local tallies, top-1, max |dlogit|."""
    e2e, local = Tally(), Tally()
    c32 = c16 = n = 0
    dlogit = 0.0
    bf16 = variant not in NO_AUTOCAST
    for x, y in batches:
        l32, s32 = forward(model, x, bf16=False)
        with VARIANTS[variant](model):
            l16, s16 = forward(model, x, bf16=bf16)
            _, s16_local = forward(model, x, bf16=bf16, force=s32)
        e2e.add(s32, s16)
        local.add(s32, s16_local)
        if y is not None:
            c32 += int((l32.argmax(1) == y).sum())
            c16 += int((l16.argmax(1) == y).sum())
            n += len(y)
        dlogit = max(dlogit, float((l32 - l16).abs().max()))
    out = {"e2e": e2e, "local": local, "max_dlogit": dlogit}
    if n:
        out.update(top1_fp32=100.0 * c32 / n, top1_bf16=100.0 * c16 / n)
    return out


# ------------------------------------------------------------------------------------- variants (script-only)
def _legacy_spike_attention(q, k, v, scale):
    # the package's spike_attention before the fix: the products follow autocast (bf16 in, bf16 out)
    return attention_mod._products(q, k, v, scale)


def _fp32_spike_attention(q, k, v, scale):
    # the simplest exact alternative: always fp32 products under autocast (slower on CPU than checked bf16)
    with torch.autocast(q.device.type, enabled=False):
        return attention_mod._products(q.float(), k.float(), v.float(), scale)


@contextlib.contextmanager
def _patch_attention(fn):
    import spikeformer.models.spikformer as m1
    import spikeformer.models.spikingformer as m2

    def tokens(q, k, v, heads, scale, fast=False):  # Spikformer's attention on [..., N, C] tokens, heads split
        split = [attention_mod._split_heads(t, heads) for t in (q, k, v)]
        return fn(*split, scale).transpose(-3, -2).flatten(-2)

    saved = (m1.token_spike_attention, m2.spike_attention)
    m1.token_spike_attention, m2.spike_attention = tokens, fn
    try:
        yield
    finally:
        m1.token_spike_attention, m2.spike_attention = saved


class _Fp32(nn.Module):
    """Runs the wrapped module outside autocast on an fp32 input."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return self.inner(x.float())


@contextlib.contextmanager
def _swap(model: nn.Module, path: str, wrap):
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    inner = getattr(parent, attr)
    setattr(parent, attr, wrap(inner))
    try:
        yield
    finally:
        setattr(parent, attr, inner)


@contextlib.contextmanager
def _pre_hooks(model: nn.Module, types, fn):
    hooks = [m.register_forward_pre_hook(fn) for m in model.modules() if isinstance(m, types)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _emulated_gemm(round_inputs: bool, round_output: bool):
    """Patch Linear/Conv2d forwards: fp32 maths on bf16-rounded weights (and inputs), output optionally rounded."""
    r = lambda t: t.to(BF16).float()  # noqa: E731

    def linear(self, x):
        with torch.autocast("cpu", enabled=False):
            xi = r(x.float()) if round_inputs else x.float()
            b = None if self.bias is None else (r(self.bias) if round_inputs else self.bias)
            y = F.linear(xi, r(self.weight), b)
        return y.to(BF16) if round_output else y

    def conv(self, x):
        with torch.autocast("cpu", enabled=False):
            xi = r(x.float()) if round_inputs else x.float()
            b = None if self.bias is None else (r(self.bias) if round_inputs else self.bias)
            y = self._conv_forward(xi, r(self.weight), b)
        return y.to(BF16) if round_output else y

    @contextlib.contextmanager
    def ctx(model):
        saved = (nn.Linear.forward, nn.Conv2d.forward)
        nn.Linear.forward, nn.Conv2d.forward = linear, conv
        try:
            yield
        finally:
            nn.Linear.forward, nn.Conv2d.forward = saved

    return ctx


def _first_conv(model: nn.Module) -> str:
    return "patch_embed.proj_conv"


@contextlib.contextmanager
def _fp64(model: nn.Module):
    """The whole forward in fp64 (no autocast): how much a merely different rounding of the fp32 maths moves."""
    h = model.register_forward_pre_hook(lambda m, a: tuple(t.double() for t in a))
    model.double()
    try:
        yield
    finally:
        h.remove()
        model.float()  # fp32 -> fp64 -> fp32 is exact


VARIANTS = {
    "package": lambda model: contextlib.nullcontext(),
    "attn-bf16": lambda model: _patch_attention(_legacy_spike_attention),
    "attn-fp32": lambda model: _patch_attention(_fp32_spike_attention),
    "conv0-fp32": lambda model: _swap(model, _first_conv(model), _Fp32),
    "bn-fp32": lambda model: _pre_hooks(model, nn.modules.batchnorm._BatchNorm, lambda m, a: (a[0].float(),)),
    "gemm-fp32out": _emulated_gemm(round_inputs=True, round_output=False),
    "gemm-bf16w-only": _emulated_gemm(round_inputs=False, round_output=False),
    "head-fp32": lambda model: _swap(model, "head", _Fp32),
    "fp64": _fp64,
}
NO_AUTOCAST = {"fp64"}


@contextlib.contextmanager
def _combined(model, names):
    with contextlib.ExitStack() as st:
        for n in names:
            st.enter_context(VARIANTS[n](model))
        yield


@contextlib.contextmanager
def _first_two_convs_fp32(model):
    with _swap(model, "patch_embed.proj_conv", _Fp32), _swap(model, "patch_embed.proj_conv1", _Fp32):
        yield


VARIANTS["sps-bn-fp32"] = lambda model: _pre_hooks(model.patch_embed, nn.BatchNorm2d, lambda m, a: (a[0].float(),))
VARIANTS["conv0+spsbn-fp32"] = lambda model: _combined(model, ["conv0-fp32", "sps-bn-fp32"])
VARIANTS["conv0+bn-fp32"] = lambda model: _combined(model, ["conv0-fp32", "bn-fp32"])
VARIANTS["conv01-fp32"] = _first_two_convs_fp32


# ------------------------------------------------------------------------------------------------------ models
def digits_model(weights: str | None, out: str | None):
    from safetensors.torch import load_file

    from spikeformer.engine import build_config, train

    if weights is None:
        run = Path(out or os.path.join(tempfile.gettempdir(), "spikeformer-bench-bf16-digits"))
        weights = str(run / "best.safetensors")
        if not os.path.isfile(weights):
            print(f"training spikformer_digits_1_64 in fp32 (default recipe) into {run} ...", flush=True)
            t = time.perf_counter()
            res = train(build_config(None, ["amp=none", "report=false"], out=str(run)), progress=False)
            print(f"  done in {time.perf_counter() - t:.0f} s: best top-1 {res['best_top1']:.2f} % "
                  f"(epoch {res['best_epoch']})", flush=True)
    model = create_model("spikformer_digits_1_64", num_classes=10)
    model.load_state_dict(load_file(weights))
    return model.eval(), weights


def digits_batches(T: int, batch: int):
    from spikeformer.data import build_dataset

    ds = build_dataset("digits", "test", T=T)
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    return [(xs[i:i + batch], ys[i:i + batch]) for i in range(0, len(xs), batch)]


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor, passes: int = 3) -> None:
    """Set every BatchNorm's running statistics to the (cumulative) batch statistics of fp32 forwards on ``x``.

    A randomly initialised model with the default running stats (mean 0, var 1) is nearly silent in eval mode (the
    random convolutions' outputs are far below threshold), which would make any agreement trivially 100 %."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for _ in range(passes):
        model(x)
    model.eval()


def cifar_model_and_batches(seed: int):
    torch.manual_seed(seed)
    model = create_model("spikformer_cifar_4_384", num_classes=10)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    calibrate_bn(model, x)
    return model, [(x, None)]


# ------------------------------------------------------------------------------------------------------ report
def _short(name: str) -> str:
    return name.replace("patch_embed.", "sps.").replace("block.", "b").replace("_lif", "")


def print_table(title: str, results: dict, variants: list[str]) -> None:
    first = results[variants[0]]
    layers = list(first["e2e"].n)
    sites = sum(first["e2e"].n.values())
    fired = sum(first["e2e"].fired.values())
    print(f"\n## {title}: {len(layers)} neuron layers, {sites / 1e6:.2f} M spike sites, "
          f"fp32 firing rate {100.0 * fired / sites:.2f} %")
    print("agreement with the fp32 spikes, % (end to end / local)")
    head = f"| {'layer':<16} | {'rate %':>6} | " + " | ".join(f"{v:>15}" for v in variants) + " |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for k in layers:
        rate = 100.0 * first["e2e"].fired[k] / first["e2e"].n[k]
        cells = [f"{results[v]['e2e'].layer(k):6.2f} / {results[v]['local'].layer(k):6.2f}" for v in variants]
        print(f"| {_short(k):<16} | {rate:6.2f} | " + " | ".join(f"{c:>15}" for c in cells) + " |")
    cells = [f"{results[v]['e2e'].overall():6.2f} / {results[v]['local'].overall():6.2f}" for v in variants]
    print(f"| {'ALL':<16} | {100.0 * fired / sites:6.2f} | " + " | ".join(f"{c:>15}" for c in cells) + " |")
    if "top1_fp32" in first:
        print(f"top-1 fp32 forward: {first['top1_fp32']:.2f} %; bf16 forward: "
              + ", ".join(f"{v} {results[v]['top1_bf16']:.2f} %" for v in variants))
    print("max |logit fp32 - logit bf16|: " + ", ".join(f"{v} {results[v]['max_dlogit']:.3f}" for v in variants))


def time_bf16_steps(model, x, reps: int, variants) -> dict:
    """Median wall time of a bf16-autocast forward (eval, no grad) and of a training step's forward + backward
    (train mode, backward outside autocast as in the engine), per variant; the rounds interleave the variants."""
    fwd = {v: [] for v in variants}
    step = {v: [] for v in variants}
    state = {k: t.clone() for k, t in model.state_dict().items()}  # train-mode forwards move BN statistics
    for r in range(reps + 1):
        for v in variants:
            with VARIANTS[v](model):
                model.eval()
                with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
                    t = time.perf_counter()
                    model(x)
                    t_f = time.perf_counter() - t
                model.train()
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=BF16):
                    out = model(x)
                out.float().sum().backward()
                t_s = time.perf_counter() - t
                model.zero_grad(set_to_none=True)
            if r:  # the first round warms up
                fwd[v].append(t_f)
                step[v].append(t_s)
    model.load_state_dict(state)
    model.eval()
    med = lambda ts: sorted(ts)[len(ts) // 2]  # noqa: E731
    return {v: (med(fwd[v]), med(step[v])) for v in variants}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="trained spikformer_digits_1_64 weights (.safetensors); default: train them")
    p.add_argument("--out", help="run directory to train into / reuse (default: under the system temp dir)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, first one is the reference")
    p.add_argument("--models", default="digits,cifar", help="comma-separated: digits, cifar")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-reps", type=int, default=5, help="timed bf16 forwards of the CIFAR model (0: skip)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")

    models = args.models.split(",")
    if "digits" in models:
        model, weights = digits_model(args.weights, args.out)
        batches = digits_batches(model.T, args.batch)
        t = time.perf_counter()
        res = {v: measure(model, batches, v) for v in variants}
        print_table(f"spikformer_digits_1_64, trained ({weights}), 360 test digits, eval", res, variants)
        print(f"({time.perf_counter() - t:.0f} s)")
    if "cifar" not in models:
        return
    cmodel, cbatches = cifar_model_and_batches(args.seed)
    cvariants = [v for v in variants if v != "head-fp32"]  # no labels: the head only moves logits
    t = time.perf_counter()
    cres = {v: measure(cmodel, cbatches, v) for v in cvariants}
    print_table("spikformer_cifar_4_384, random init + BN calibrated, 16 random 32x32 images, eval", cres,
                cvariants)
    print(f"({time.perf_counter() - t:.0f} s)")
    if args.time_reps:
        tv = ["attn-bf16", "attn-fp32", "package", "conv0-fp32", "conv0+spsbn-fp32", "conv01-fp32"]
        tm = time_bf16_steps(cmodel, cbatches[0][0], args.time_reps, tv)
        print(f"\nbf16 autocast, spikformer_cifar_4_384, 16 images, {args.threads} thread(s), median of "
              f"{args.time_reps} interleaved rounds (ms):")
        print("| variant | forward (eval) | forward + backward (train) |\n|---|---|---|")
        for v in tv:
            print(f"| {v} | {tm[v][0] * 1e3:.0f} | {tm[v][1] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
