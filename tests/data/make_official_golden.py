"""Regenerate the golden files used by tests/test_spikformer_official.py and tests/test_spikingformer.py.

Runs the *official* model code (not part of this project) on small random models and stores, per layout, the
official state_dict (float tensors rounded to fp16 so the files stay small; the model ran on exactly those values)
and the official logits for a fixed, formula-defined input (see ``golden_input``).

Needs SpikingJelly 0.0.0.0.12, einops and timm, and checkouts of ZK-Zhou/spikformer and
zhouchenlin2096/Spikingformer:

    pip install --target SJ spikingjelly==0.0.0.0.12 einops
    PYTHONPATH=SJ python tests/data/make_official_golden.py --spikformer PATH --spikingformer PATH [--out DIR --kind KIND]

On a kind of CPU other than AMD AVX2 (tests/helpers.py ``cpu_kind``) pass ``--kind`` (e.g. ``avx512_intel``): the
files are then named ``<family>_official_golden_<kind>.safetensors``, and the tests on such a machine take them.

``backend='cupy'`` is switched to ``'torch'`` in memory when the official model files are loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ (for golden_input)

from official_refs import LAYOUTS, golden_input  # noqa: E402


def load_official(path: Path, name: str) -> types.ModuleType:
    src = path.read_text().replace("backend='cupy'", "backend='torch'")
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    sys.modules[name] = mod  # timm's register_model looks the module up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(src, str(path), "exec"), mod.__dict__)
    return mod


def randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Random BN affine/statistics (biases spread so that 20-40% of neurons fire), biases, LayerNorms, pos_embed."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.rand(c, generator=gen) * 3.0 - 0.5
            m.running_mean.data = torch.randn(c, generator=gen) * 0.2
            m.running_var.data = torch.rand(c, generator=gen) * 1.5 + 0.5
            m.num_batches_tracked.fill_(7)
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is not None:
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
        elif isinstance(m, nn.LayerNorm):
            m.weight.data = torch.randn(m.weight.shape, generator=gen)
            m.bias.data = torch.randn(m.bias.shape, generator=gen)
    for n, p in model.named_parameters():
        if n == "pos_embed":
            p.data = torch.randn(p.shape, generator=gen)
    with torch.no_grad():  # the model runs on fp16-representable values, so the fp16 file reproduces it exactly
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def build(family: str, layout: str, repos: dict) -> nn.Module:
    spec = LAYOUTS[family][layout]
    LN = partial(nn.LayerNorm, eps=1e-6)
    common = dict(patch_size=16, embed_dims=spec["embed_dim"], num_heads=spec["num_heads"], mlp_ratios=4,
                  in_channels=spec["in_chans"], num_classes=spec["num_classes"], qkv_bias=False, norm_layer=LN,
                  depths=spec["depth"], sr_ratios=1)
    if family == "spikformer":
        file = {"imagenet": "imagenet/model.py", "cifar": "cifar10/model.py", "dvs": "cifar10dvs/model.py"}[layout]
        mod = load_official(repos["spikformer"] / file, f"official_spikformer_{layout}")
        kw = dict(T=spec["T"]) if layout == "cifar" else {}  # the ImageNet code hard-codes T=4, DVS takes T from x
        return mod.Spikformer(img_size_h=spec["img"], img_size_w=spec["img"], **common, **kw)
    file = {"imagenet": "imagenet/model.py", "cifar": "cifar10/model.py", "dvs": "cifar10-dvs/model.py"}[layout]
    mod = load_official(repos["spikingformer"] / file, f"official_spikingformer_{layout}")
    kw = {} if layout == "dvs" else dict(T=spec["T"])
    return mod.vit_snn(img_size_h=spec["img"], img_size_w=spec["img"], **common, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spikformer", type=Path, required=True, help="checkout of ZK-Zhou/spikformer")
    ap.add_argument("--spikingformer", type=Path, required=True, help="checkout of zhouchenlin2096/Spikingformer")
    ap.add_argument("--out", type=Path, default=HERE, help="directory to write the files to")
    ap.add_argument("--kind", default="", help="suffix of a CPU kind's files, e.g. avx512_intel (tests/helpers.py)")
    args = ap.parse_args()
    from safetensors.torch import save_file
    from spikingjelly.clock_driven import functional as sjf

    torch.set_num_threads(1)
    repos = {"spikformer": args.spikformer, "spikingformer": args.spikingformer}
    for family, layouts in LAYOUTS.items():
        tensors, meta = {}, {"layouts": json.dumps(layouts), "generator": "tests/data/make_official_golden.py"}
        for i, layout in enumerate(layouts):
            torch.manual_seed(i)
            model = build(family, layout, repos)
            randomize(model, torch.Generator().manual_seed(1000 + i))
            model.eval()
            x = golden_input(layouts[layout])
            if layout == "dvs":
                x = x.transpose(0, 1)  # the official DVS models take [B, T, C, H, W]
            with torch.no_grad():
                sjf.reset_net(model)
                logits = model(x)
            for k, v in model.state_dict().items():
                tensors[f"{layout}/{k}"] = v.half() if v.is_floating_point() else v
            tensors[f"{layout}/logits"] = logits.float().contiguous()
            print(f"{family}/{layout}: logits {tuple(logits.shape)}, std {logits.std():.3f}")
        out = args.out / f"{family}_official_golden{'_' + args.kind if args.kind else ''}.safetensors"
        save_file(tensors, str(out), metadata=meta)
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
