"""Write ``spikingresformer_golden.safetensors``: logits of the *official* SpikingResformer on fixed weights.

Not run by the test suite. It needs the official repository (never copied into this one) and SpikingJelly
0.0.0.0.14, the release the official code pins, installed outside the project::

    pip install --no-deps --target /tmp/sj014 spikingjelly==0.0.0.0.14
    git clone https://github.com/xyshi2000/SpikingResformer /tmp/SpikingResformer   # or any git dir of it
    python tests/data/spikingresformer_make_golden.py --official-git /tmp/SpikingResformer/.git \\
        --spikingjelly /tmp/sj014 [--commit 3f75127] [--out tests/data/spikingresformer_golden.safetensors]

The official ``models/`` package is read from the git directory (``git show``) and imported from memory, with
``backend='cupy'`` replaced by ``backend='torch'`` (the CPU backend; the same arithmetic). One thread, as the tests
pin it: a different thread count may split the convolutions' reductions differently and change the last bits.

Two small models are built with the official ``SpikingResformer`` class (one ImageNet-stem LIF model, one
3x3-stem parametric-LIF model like ``spikingresformer_dvsg``). Weights are random, rounded to fp16 so the file
stays small (the official model runs on exactly those values in fp32). For each model the file stores the official
state_dict (``<case>.sd.<official key>``, firing-rate buffers all zero), an input, the per-step logits of one
training-mode forward from zero firing-rate buffers and the buffers it leaves (``<case>.train.*``), and the
per-step eval-mode logits after it (``<case>.eval_logits``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

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
OFFICIAL_FILES = ("models/__init__.py", "models/submodules/__init__.py", "models/submodules/layers.py",
                  "models/spikingresformer.py")


def import_official(git_dir: str, commit: str):
    """Import the official ``models`` package from ``git_dir`` at ``commit`` without writing it to disk."""
    for path in OFFICIAL_FILES:
        src = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                             capture_output=True, text=True).stdout
        src = src.replace("backend='cupy'", "backend='torch'")
        name = path[:-3].replace("/", ".").removesuffix(".__init__")
        is_pkg = path.endswith("__init__.py")
        spec = importlib.util.spec_from_loader(name, loader=None, is_package=is_pkg)
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = f"<{commit}:{path}>"
        if is_pkg:
            mod.__path__ = []
        sys.modules[name] = mod
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, mod)
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - the official code, read above
    return sys.modules["models.spikingresformer"], sys.modules["models.submodules.layers"]


def build(official, layers_mod, c):
    import torch
    from spikingjelly.activation_based import layer

    layers = [["DSSA", "GWFFN"] * d for d in c["depths"]]
    prologue = None
    if not c["imagenet_stem"]:
        prologue = torch.nn.Sequential(layer.Conv2d(3, c["planes"][0], 3, 1, 1, bias=False, step_mode="m"),
                                       layers_mod.BN(c["planes"][0]))
    kw = dict(activation=layers_mod.PLIF) if c["neuron"] == "plif" else {}
    return official.SpikingResformer(layers, c["planes"], c["num_heads"], c["patch_sizes"], img_size=c["img_size"],
                                     T=c["T"], in_channels=3, num_classes=c["num_classes"], prologue=prologue,
                                     group_size=c["group_size"], **kw)


def randomise(model, g):
    import torch

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-git", required=True, help="git directory of xyshi2000/SpikingResformer")
    ap.add_argument("--commit", default="HEAD", help="official commit to read (the tests were made at 3f75127)")
    ap.add_argument("--spikingjelly", required=True, help="directory holding spikingjelly 0.0.0.0.14")
    ap.add_argument("--out", default=str(Path(__file__).with_name("spikingresformer_golden.safetensors")))
    args = ap.parse_args(argv)
    sys.path.insert(0, args.spikingjelly)
    import torch
    from safetensors.torch import save_file
    from spikingjelly.activation_based import functional

    official, layers_mod = import_official(args.official_git, args.commit)
    commit = subprocess.run(["git", "--git-dir", args.official_git, "rev-parse", "--short", args.commit],
                            check=True, capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    tensors, meta = {}, {}
    for i, (name, c) in enumerate(CASES.items()):
        g = torch.Generator().manual_seed(1234 + i)
        model = build(official, layers_mod, c)
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
    meta["source"] = (f"xyshi2000/SpikingResformer models/ (commit {commit}), spikingjelly 0.0.0.0.14 backend torch, "
                      f"torch {torch.__version__}, 1 thread")
    out = Path(args.out)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
    print("wrote", out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
