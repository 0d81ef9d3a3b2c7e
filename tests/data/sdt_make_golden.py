"""Rebuild tests/data/sdt_{imagenet,cifar,dvs,dvs128}.safetensors from the OFFICIAL Spike-driven Transformer code.

Not part of the test run (it needs the official repository, which spikeformer does not ship). Usage:

    pip install --no-deps --target SJ_DIR spikingjelly==0.0.0.0.12
    # a copy of BICLab/Spike-Driven-Transformer (model/, module/) with backend="cupy" replaced by backend="torch"
    python tests/data/sdt_make_golden.py --official OFFICIAL_DIR --spikingjelly SJ_DIR [--out tests/data]

Each file holds a reduced-config official-layout state_dict (random values, rounded to fp16 and stored as fp16 to
keep the file small; the official model runs on their fp32 cast), uint8 inputs and the official eval-mode fp32
logits. Images are fed as (u8 / 255 - 0.5) / 0.25, event frames as counts; test_sdt.py repeats that.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

CASES = {
    "imagenet": dict(model=dict(in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=8, T=4,
                                pooling_stat="1111"),
                     inputs={"input": (2, 3, 64, 64), "input_288": (1, 3, 288, 288)}),
    "cifar": dict(model=dict(in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=8, T=4, pooling_stat="0011"),
                  inputs={"input": (2, 3, 32, 32)}),
    "dvs": dict(model=dict(in_chans=2, num_classes=10, embed_dim=32, depth=2, num_heads=8, T=4, pooling_stat="0011",
                           erode=True),
                inputs={"input": (4, 2, 2, 32, 32)}),  # [T, B, 2, H, W] event counts
    "dvs128": dict(model=dict(in_chans=2, num_classes=11, embed_dim=32, depth=2, num_heads=8, T=4,
                              pooling_stat="0111"),
                   inputs={"input": (4, 2, 2, 32, 32)}),
}


def randomize(model, seed: int) -> dict:
    """Random weights that keep every spiking layer firing (about 2-80% here): the comparison uses every path."""
    import torch

    g = torch.Generator().manual_seed(seed)
    new = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            new[k] = v
        elif k.endswith("running_mean"):
            new[k] = torch.randn(v.shape, generator=g) * 0.2
        elif k.endswith("running_var"):
            new[k] = torch.rand(v.shape, generator=g) * 1.5 + 0.5
        elif k.endswith(".weight") and v.dim() == 1:  # BN scale
            new[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(".bias"):
            new[k] = torch.randn(v.shape, generator=g) * 0.5 + (0.3 if "bn" in k else 0.0)
            if any(f"attn.{n}_bn.bias" in k for n in "qkv"):
                new[k] += 1.0  # busy attention at these tiny token counts
        else:
            new[k] = torch.randn(v.shape, generator=g) * (1.5 / v[0].numel() ** 0.5)
    return {k: (v.half().float() if v.is_floating_point() else v) for k, v in new.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="directory holding the official model/ and module/ packages")
    ap.add_argument("--spikingjelly", required=True, help="directory holding spikingjelly 0.0.0.0.12")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args(argv)
    sys.path[:0] = [args.spikingjelly, args.official]
    warnings.filterwarnings("ignore")
    import torch
    from safetensors.torch import save_file
    from spikingjelly.clock_driven import functional
    from model import sdt as official_sdt

    torch.set_num_threads(1)
    for i, (name, case) in enumerate(CASES.items()):
        c = case["model"]
        torch.manual_seed(100 + i)
        off = official_sdt(img_size_h=64, img_size_w=64, patch_size=16, in_channels=c["in_chans"],
                           num_classes=c["num_classes"], embed_dims=c["embed_dim"], num_heads=c["num_heads"],
                           mlp_ratios=4, depths=c["depth"], sr_ratios=1, T=c["T"], pooling_stat=c["pooling_stat"],
                           spike_mode="lif", dvs_mode=c.get("erode", False))
        sd = randomize(off, 100 + i)
        off.load_state_dict(sd)
        off.eval()
        tensors = {f"state_dict.{k}": (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        g = torch.Generator().manual_seed(200 + i)
        for key, shape in case["inputs"].items():
            dvs = len(shape) == 5
            u8 = torch.randint(0, 4 if dvs else 256, shape, generator=g, dtype=torch.uint8)
            x = u8.float() if dvs else (u8.float() / 255.0 - 0.5) / 0.25
            with torch.no_grad():
                hook = {}
                logits, hook = off(x.transpose(0, 1).contiguous() if dvs else x, hook=hook)  # official: [B, T, ...]
                functional.reset_net(off)
            rates = [v.float().mean().item() for v in hook.values()]
            print(f"{name} {key} {tuple(shape)}: firing rates {min(rates):.3f}..{max(rates):.3f}")
            tensors[key] = u8
            tensors[key.replace("input", "logits")] = logits.contiguous()
        meta = {"model_kwargs": json.dumps(c), "source": "BICLab/Spike-Driven-Transformer @3faa822 with spikingjelly "
                "0.0.0.0.12 (backend torch), eval mode, fp32"}
        save_file(tensors, str(Path(args.out) / f"sdt_{name}.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
