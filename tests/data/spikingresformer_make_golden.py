"""Write ``spikingresformer_golden.safetensors``: logits of the *official* SpikingResformer on fixed weights.

Not run by the test suite. It needs the official code and SpikingJelly 0.0.0.0.14, e.g.::

    pip install --no-deps --target SJ spikingjelly==0.0.0.0.14
    # a copy of xyshi2000/SpikingResformer's models/ with backend='cupy' replaced by backend='torch'
    PYTHONPATH=SJ:OFFICIAL python tests/data/spikingresformer_make_golden.py

Two small models are built with the official ``SpikingResformer`` class (one ImageNet-stem LIF model, one
3x3-stem parametric-LIF model like ``spikingresformer_dvsg``). Weights are random, rounded to fp16 so the file
stays small (the official model runs on exactly those values in fp32). For each model the file stores the official
state_dict (``<case>.sd.<official key>``, firing-rate buffers all zero), an input, the per-step logits of one
training-mode forward from zero firing-rate buffers and the buffers it leaves (``<case>.train.*``), and the
per-step eval-mode logits after it (``<case>.eval_logits``).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from spikingjelly.activation_based import functional

import models.spikingresformer as official
from models.submodules.layers import PLIF

CASES = {
    "lif_imagenet_stem": dict(
        planes=[16, 32, 48], num_heads=[1, 2, 3], depths=[1, 1, 1], patch_sizes=[4, 2, 1], img_size=32, T=4,
        num_classes=7, imagenet_stem=True, group_size=16, neuron="lif", input=[2, 3, 32, 32],
    ),
    "plif_dvs_stem": dict(
        planes=[8, 16, 32], num_heads=[1, 2, 4], depths=[1, 2, 1], patch_sizes=[4, 2, 1], img_size=16, T=5,
        num_classes=5, imagenet_stem=False, group_size=8, neuron="plif", input=[5, 2, 3, 16, 16],
    ),
}


def build(c):
    layers = [["DSSA", "GWFFN"] * d for d in c["depths"]]
    prologue = None
    if not c["imagenet_stem"]:
        from spikingjelly.activation_based import layer
        from models.submodules.layers import BN
        prologue = torch.nn.Sequential(layer.Conv2d(3, c["planes"][0], 3, 1, 1, bias=False, step_mode="m"),
                                       BN(c["planes"][0]))
    kw = dict(activation=PLIF) if c["neuron"] == "plif" else {}
    return official.SpikingResformer(layers, c["planes"], c["num_heads"], c["patch_sizes"], img_size=c["img_size"],
                                     T=c["T"], in_channels=3, num_classes=c["num_classes"], prologue=prologue,
                                     group_size=c["group_size"], **kw)


def randomise(model, g):
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
            continue
        if "firing_rate" in k:
            x = torch.zeros(v.shape)
        elif k.endswith(".w"):
            x = torch.randn(v.shape, generator=g) * 0.5
        elif k.endswith("running_mean"):
            x = torch.randn(v.shape, generator=g) * 0.2
        elif k.endswith("running_var"):
            x = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("bn.weight"):
            x = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("bn.bias"):
            x = torch.randn(v.shape, generator=g) * 0.5
        else:
            x = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        sd[k] = x.half().float()
    model.load_state_dict(sd)
    return sd


def main(out=Path(__file__).with_name("spikingresformer_golden.safetensors")):
    torch.set_num_threads(1)
    tensors, meta = {}, {}
    for i, (name, c) in enumerate(CASES.items()):
        g = torch.Generator().manual_seed(1234 + i)
        model = build(c)
        sd = randomise(model, g)
        shape = c["input"]
        if len(shape) == 4:
            x = (torch.rand(shape, generator=g) * 2 - 1).half().float()
            x_off = x
        else:  # event-count frames, ours [T, B, ...]; the official forward takes [B, T, ...]
            x = (torch.rand(shape, generator=g) < 0.3).float() * torch.randint(1, 3, shape, generator=g)
            x_off = x.transpose(0, 1)
        model.train()
        train_logits = model(x_off).detach()
        functional.reset_net(model)
        after = model.state_dict()
        model.eval()
        with torch.no_grad():
            eval_logits = model(x_off)
        functional.reset_net(model)
        for k, v in sd.items():
            tensors[f"{name}.sd.{k}"] = v.half() if v.is_floating_point() else v
        for k, v in after.items():
            if "firing_rate" in k or "running" in k:
                tensors[f"{name}.train.{k}"] = v.clone()
        tensors[f"{name}.input"] = x.half()
        tensors[f"{name}.train_logits"] = train_logits
        tensors[f"{name}.eval_logits"] = eval_logits
        meta[name] = json.dumps(c)
        print(name, "params", sum(p.numel() for p in model.parameters()), "eval |logit| max",
              eval_logits.abs().max().item())
    meta["source"] = "xyshi2000/SpikingResformer models/ (commit 3f75127), spikingjelly 0.0.0.0.14 backend torch"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
    print("wrote", out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
