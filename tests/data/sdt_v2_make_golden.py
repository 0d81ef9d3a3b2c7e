"""Rebuild tests/data/sdt_v2_golden.safetensors from the OFFICIAL Spike-driven Transformer V2 code.

Not part of the test run (it needs the official repository, which spikeformer does not ship). Usage:

    pip install --no-deps --target SJ_DIR spikingjelly==0.0.0.0.12
    # classification/models.py of BICLab/Spike-Driven-Transformer-V2 (@35f245f) with backend="cupy" replaced by
    # backend="torch", saved as OFFICIAL_DIR/sdtv2_models.py
    python tests/data/sdt_v2_make_golden.py --official OFFICIAL_DIR --spikingjelly SJ_DIR [--out tests/data]

The model is the full ``metaspikformer_8_384`` (T=4, 1000 classes, with and without its distillation head). Its
31M weights are not stored: :func:`golden_weights` makes them from a seed and each key's name (test_sdt_v2.py calls
the same function), on a coarse dyadic grid (integers times a power of two; BatchNorm with unit standard deviation)
so that float32 sums are exact and no membrane lands within rounding of a threshold: the official float32 and
float64 logits agree, which this script checks. The file holds the seed, the uint8 inputs, the official
eval-mode fp32 logits and the official state_dict layout (key -> shape, with ``head_kd``). Images are fed as ``(u8 - 128) / 32`` (a 1/32 grid).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import warnings
import zlib
from pathlib import Path

SEED = 2024
INPUT_SHAPE = (2, 3, 64, 64)
T = 4
# BatchNorm eps and running_var on the dyadic grid with running_var + eps = 1 exactly (PyTorch's eps 1e-5 has no
# exact float32 value, so sqrt(var + eps) would round differently in float32 and float64)
GOLDEN_EPS = 2.0 ** -17
UNIT_VAR = 1.0 - GOLDEN_EPS


def set_golden_eps(model) -> None:
    """Every BatchNorm of ``model`` on :data:`GOLDEN_EPS` (the official code and ours alike)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = GOLDEN_EPS


def _grid_weight(shape, fan_in, g):
    import torch

    # integers in [-4, 4] times the power of two nearest to the He-uniform step sqrt(6 / fan_in) / 4
    step = 2.0 ** round(torch.log2(torch.tensor((6.0 / fan_in) ** 0.5 / 4)).item())
    return torch.randint(-4, 5, shape, generator=g).float() * step


def golden_weights(layout: dict, seed: int = SEED) -> dict:
    """Dyadic weights for an official-layout state_dict ``{key: shape}``, each drawn from ``seed`` and the key's
    name (so the MLP's ``[out, in, 1]`` Conv1d kernel and our ``[out, in]`` TokenLinear weight get the same values)."""
    import torch

    out = {}
    for key, shape in layout.items():
        g = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
        prefix, leaf = key.rsplit(".", 1)
        is_bn = f"{prefix}.running_mean" in layout
        n = int(torch.Size(shape).numel())
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0)
        elif leaf == "running_mean":
            out[key] = torch.randint(-2, 3, shape, generator=g).float() / 8
        elif leaf == "running_var":
            out[key] = torch.full(shape, UNIT_VAR)
        elif is_bn and leaf == "weight":
            out[key] = torch.randint(3, 7, shape, generator=g).float() / 4  # 0.75 .. 1.5
        elif is_bn and leaf == "bias":
            # a positive offset keeps the neurons after the BatchNorms firing at useful rates
            out[key] = torch.randint(-2, 6, shape, generator=g).float() / 8 + (1.0 if "attn" in key else 0.5)
        elif leaf == "bias":
            out[key] = torch.randint(-2, 3, shape, generator=g).float() / 16
        else:
            fan_in = n // shape[0]
            out[key] = _grid_weight(shape, fan_in, g).reshape(shape)
    return out


# A second, generic case: a narrow model with Gaussian weights (not rounding-proof), which only bit-identical
# operations reproduce; the test compares it in exact numerics on one thread.
RANDOM_CASE = dict(embed_dim=[16, 32, 64, 64], num_heads=8, num_classes=10, T=2, input_shape=(2, 3, 32, 32))


def random_weights(layout: dict, seed: int = SEED) -> dict:
    """Gaussian weights (BatchNorm statistics that keep the neurons firing) drawn from ``seed`` and each key."""
    import torch

    out = {}
    for key, shape in layout.items():
        g = torch.Generator().manual_seed(seed + 7 + zlib.crc32(key.encode()))
        prefix, leaf = key.rsplit(".", 1)
        is_bn = f"{prefix}.running_mean" in layout
        n = int(torch.Size(shape).numel())
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0)
        elif leaf == "running_mean":
            out[key] = torch.randn(shape, generator=g) * 0.2
        elif leaf == "running_var":
            out[key] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif is_bn and leaf == "weight":
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif leaf == "bias":
            out[key] = torch.randn(shape, generator=g) * 0.5 + (0.8 if is_bn else 0.0)
        else:
            out[key] = (torch.randn(n, generator=g) * (2.0 / (n // shape[0])) ** 0.5).reshape(shape)
    return out


def golden_inputs(seed: int = SEED):
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    u8 = torch.randint(0, 256, INPUT_SHAPE, generator=g, dtype=torch.uint8)
    return u8, (u8.float() - 128) / 32


def _stub_missing_imports():
    """The official models.py imports torchinfo and einops without using them."""
    if "torchinfo" not in sys.modules:
        sys.modules["torchinfo"] = types.ModuleType("torchinfo")
    try:
        import einops.layers.torch  # noqa: F401
    except ImportError:
        einops = types.ModuleType("einops")
        layers = types.ModuleType("einops.layers")
        lt = types.ModuleType("einops.layers.torch")
        lt.Rearrange = object
        einops.layers, layers.torch = layers, lt
        sys.modules.update({"einops": einops, "einops.layers": layers, "einops.layers.torch": lt})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="directory holding sdtv2_models.py (official models.py)")
    ap.add_argument("--spikingjelly", required=True, help="directory holding spikingjelly 0.0.0.0.12")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args(argv)
    sys.path[:0] = [args.spikingjelly, args.official]
    warnings.filterwarnings("ignore")
    _stub_missing_imports()
    import torch
    from safetensors.torch import save_file
    from spikingjelly.clock_driven import functional
    from sdtv2_models import metaspikformer_8_384

    torch.set_num_threads(1)
    u8, x = golden_inputs()
    tensors = {"input": u8}
    for kd in (False, True):
        torch.manual_seed(0)
        off = metaspikformer_8_384(kd=kd)
        off.T = T
        layout = {k: tuple(v.shape) for k, v in off.state_dict().items()}
        off.load_state_dict(golden_weights(layout))
        set_golden_eps(off)
        off.eval()
        rates = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: rates.__setitem__(n, float(o.float().mean())))
                 for n, m in off.named_modules() if type(m).__name__ == "MultiStepLIFNode"]
        with torch.no_grad():
            logits = off(x)
            functional.reset_net(off)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            logits64 = off.double()(x.double())
            functional.reset_net(off)
        # every float32 operation was exact (or far from a threshold): float64 gives the same logits
        assert torch.equal(logits.double(), logits64), (logits.double() - logits64).abs().max()
        vals = list(rates.values())
        print(f"kd={kd}: {len(vals)} neurons, firing rates {min(vals):.3f}..{max(vals):.3f}, "
              f"dead {sum(v == 0 for v in vals)}, saturated {sum(v == 1 for v in vals)}; logits std "
              f"{logits.std():.3f}, argmax {logits.argmax(1).tolist()}")
        tensors["logits_kd" if kd else "logits"] = logits.contiguous()
        official_layout = layout
    # the generic case
    from sdtv2_models import Spiking_vit_MetaFormer

    c = RANDOM_CASE
    torch.manual_seed(0)
    off = Spiking_vit_MetaFormer(embed_dim=c["embed_dim"], num_heads=c["num_heads"], mlp_ratios=4, in_channels=3,
                                 num_classes=c["num_classes"], depths=8, sr_ratios=1)
    off.T = c["T"]
    off.load_state_dict(random_weights({k: tuple(v.shape) for k, v in off.state_dict().items()}))
    off.eval()
    g = torch.Generator().manual_seed(SEED + 2)
    u8 = torch.randint(0, 256, c["input_shape"], generator=g, dtype=torch.uint8)
    with torch.no_grad():
        logits = off((u8.float() - 128) / 32)
        functional.reset_net(off)
    print(f"random case: logits std {logits.std():.3f}")
    tensors["input_random"], tensors["logits_random"] = u8, logits.contiguous()
    meta = {"official_layout": json.dumps(official_layout), "random_case": json.dumps(RANDOM_CASE), "seed": str(SEED), "T": str(T), "model": "metaspikformer_8_384",
            "source": "BICLab/Spike-Driven-Transformer-V2 @35f245f classification/models.py with spikingjelly "
            "0.0.0.0.12 (backend torch), eval mode, fp32 (equal to its fp64 logits)",
            "input": "(u8 - 128) / 32", "kwargs": json.dumps({"T": T})}
    save_file(tensors, str(Path(args.out) / "sdt_v2_golden.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
