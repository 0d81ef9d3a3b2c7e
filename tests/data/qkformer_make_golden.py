"""Rebuild tests/data/qkformer_golden.safetensors from the OFFICIAL QKFormer code (zhouchenlin2096/QKFormer).

Not part of the test run: it needs the official repository, which spikeformer does not ship. Usage:

    pip install --no-deps --target SJ_DIR spikingjelly==0.0.0.0.12 einops
    python tests/data/qkformer_make_golden.py --official REPO_DIR --spikingjelly SJ_DIR [--out tests/data]

REPO_DIR is a checkout of zhouchenlin2096/QKFormer (commit c2a00e8 was used); the model files are read from it and
``backend='cupy'`` is replaced by ``'torch'`` in memory. Three full-size official models run in eval mode, fp32, one
thread:

* ``imagenet``: ``imagenet/qkformer.py`` ``QKFormer_10_384(T=4)`` on 64x64 images (16/8/4 token grids);
* ``cifar``: ``cifar10/model.py`` with the cifar10.yml arguments (dim 384, depths 4, T=4) on 32x32 images;
* ``dvs``: ``cifar10-dvs/model.py`` ``QKFormer`` (dim 256, mlp_ratio 1) on 64x64 event frames at T=4.

The weights are not stored (16M and 7M parameters): :func:`official_weights` generates them from the official keys
and shapes (kept in the file's metadata) and a seed, with torch's CPU generator, and the test regenerates them the
same way. Each case stores the uint8 input (images are fed as ``(u8 / 255 - 0.5) / 0.25``, event frames as counts
``[T, B, 2, H, W]``; the official DVS model takes ``[B, T, ...]``), the official logits of every sample run alone
(``logits``, batch 1: the official SSA's ``proj_lif`` runs over T*B steps and so couples the samples of a batch) and
the official logits of the whole batch at once (``logits_batched``, which differ: that coupling).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import warnings
import zlib
from pathlib import Path

SEED = 1
CASES = {
    "imagenet": dict(file="imagenet/qkformer.py", input=(2, 3, 64, 64)),
    "cifar": dict(file="cifar10/model.py", input=(2, 3, 32, 32)),
    "dvs": dict(file="cifar10-dvs/model.py", input=(4, 2, 2, 64, 64)),  # [T, B, 2, H, W] counts 0..3
}
SOURCE = "zhouchenlin2096/QKFormer @c2a00e8 with spikingjelly 0.0.0.0.12 (backend torch), eval mode, fp32, 1 thread"


def official_weights(entries, seed: int = SEED) -> dict:
    """A state_dict for ``entries`` (``[(key, shape), ...]``): each tensor drawn from its own generator (seeded by the
    key), so the values do not depend on the order of the keys. BN scales 0.5-1.5 and positive shifts, running
    statistics near (0, 1), convolution weights at 1.5 / sqrt(fan_in): every neuron layer fires (0.4-77 % of the
    time here). Values are rounded to fp16 so that they are the same numbers however they are stored."""
    import torch

    out = {}
    for key, shape in entries:
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        if key.endswith("running_mean"):
            v = torch.randn(shape, generator=g) * 0.2
        elif key.endswith("running_var"):
            v = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif key.endswith(".weight") and len(shape) == 1:  # BN scale
            v = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(".bias"):
            v = torch.randn(shape, generator=g) * 0.5 + (0.3 if "bn" in key else 0.0)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            v = torch.randn(shape, generator=g) * (1.5 / fan_in ** 0.5)
        out[key] = v.half().float()
    return out


def golden_input(u8):
    """The model input for a stored uint8 input: normalised images or event counts."""
    return u8.float() if u8.dim() == 5 else (u8.float() / 255.0 - 0.5) / 0.25


def _load_official(path: Path, name: str) -> types.ModuleType:
    src = path.read_text().replace("backend='cupy'", "backend='torch'")
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod  # timm's register_model looks the module up
    exec(compile(src, str(path), "exec"), mod.__dict__)
    return mod


def _build(case: str, mod):
    if case == "imagenet":
        return mod.QKFormer_10_384(T=4)
    if case == "cifar":  # cifar10/cifar10.yml: dim 384, heads 8 (forced), mlp 4, depths 4, T 4
        return mod.spiking_transformer(img_size_h=32, img_size_w=32, patch_size=4, embed_dims=384, num_heads=8,
                                       mlp_ratios=4, in_channels=3, num_classes=10, qkv_bias=False, depths=4,
                                       sr_ratios=1, T=4)
    return mod.QKFormer()  # cifar10-dvs: dim 256, heads 16 (forced), mlp 1, 10 classes; T from the input


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="checkout of zhouchenlin2096/QKFormer")
    ap.add_argument("--spikingjelly", required=True, help="directory holding spikingjelly 0.0.0.0.12 (and einops)")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args(argv)
    sys.path.insert(0, args.spikingjelly)
    warnings.filterwarnings("ignore")
    import torch
    from safetensors.torch import save_file
    from spikingjelly.clock_driven import functional

    torch.set_num_threads(1)
    tensors, meta = {}, {"source": SOURCE, "seed": str(SEED)}
    for i, (case, spec) in enumerate(CASES.items()):
        off = _build(case, _load_official(Path(args.official) / spec["file"], f"official_qkformer_{case}"))
        entries = [(k, list(v.shape)) for k, v in off.state_dict().items()]
        off.load_state_dict(official_weights(entries), strict=True)
        off.eval()
        g = torch.Generator().manual_seed(200 + i)
        dvs = len(spec["input"]) == 5
        u8 = torch.randint(0, 4 if dvs else 256, spec["input"], generator=g, dtype=torch.uint8)
        x = golden_input(u8)
        if dvs:
            x = x.transpose(0, 1).contiguous()  # official: [B, T, 2, H, W]
        rates = {}
        hooks = [m.register_forward_hook(lambda m, a, o, n=n: rates.__setitem__(n, o.float().mean().item()))
                 for n, m in off.named_modules() if type(m).__name__ == "MultiStepLIFNode"]
        with torch.no_grad():
            alone = []
            for b in range(x.shape[0]):
                alone.append(off(x[b:b + 1]))
                functional.reset_net(off)
            batched = off(x)
            functional.reset_net(off)
        for h in hooks:
            h.remove()
        alone = torch.cat(alone)
        print(f"{case}: firing rates {min(rates.values()):.4f}..{max(rates.values()):.4f}; batched vs alone "
              f"max |diff| {(batched - alone).abs().max().item():.4f}")
        tensors[f"{case}/input"] = u8
        tensors[f"{case}/logits"] = alone.contiguous()
        tensors[f"{case}/logits_batched"] = batched.contiguous()
        meta[f"{case}/entries"] = json.dumps(entries)
    save_file(tensors, str(Path(args.out) / "qkformer_golden.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
