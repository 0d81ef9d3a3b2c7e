"""Write ``mst_golden.safetensors``: outputs of the *official* Masked Spiking Transformer on fixed weights.

Not run by the test suite. It needs the official repository (never copied into this one), SpikingJelly
0.0.0.0.12 and timm 0.6.7 (the releases the official code pins), installed outside the project::

    pip install --no-deps --target /tmp/mst_site spikingjelly==0.0.0.0.12 timm==0.6.7
    git clone https://github.com/bic-L/Masked-Spiking-Transformer /tmp/MST       # or any git dir of it
    python tests/data/mst_make_golden.py --official-git /tmp/MST/.git --site /tmp/mst_site \\
        [--commit HEAD] [--out tests/data/mst_golden.safetensors]

``models/mst.py``, ``modules_QCFS.py`` and ``utils_QCFS.py`` are read from the git directory (``git show``) and
imported from memory. A small model of each official layout is built with the official class and
``replace_activation_by_floor(t=16, threshold=2.0)``: ``imagenet`` (BatchNorm in the MLPs) and ``cifar`` (none);
32x32 input, patch 4, embed 8, depths 2-2-2, heads 1-2-4, window 4, so there is a shifted stage with masks, a
single-window stage and a stage whose window shrinks to the grid. Weights are random, rounded to fp16 so the file
stays small (the official model runs on exactly those values); the QCFS thresholds are random in [0.5, 2].

Stored per case (``<case>.*``): the official state_dict (``sd.<key>``, with the ``relative_position_index`` and
``attn_mask`` buffers), the input; eval-mode ANN logits in float64 (weights up-cast exactly: the network is chaotic
under float32 rounding, reference 6.7) and float32 (one thread, as the tests pin it); training-mode float64 logits
(batch statistics; without drop path); and the per-step outputs of the official conversion
(``replace_activation_by_neuron``, the input fed every step as ``snn_validate`` does) for 32 steps in float64 and
float32. The ``masked`` case (imagenet layout, masking ratio 0.5)
stores the float64 ANN logits after ``torch.manual_seed(3)`` and 8 SNN steps after ``torch.manual_seed(4)``: the
masks are drawn from the global generator, so a faithful model draws the same ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SMALL = dict(img_size=32, patch_size=4, in_chans=3, num_classes=7, embed_dim=8, depths=[2, 2, 2],
             num_heads=[1, 2, 4], window_size=4)
CASES = {
    "imagenet": dict(dataset="imagenet", masking_ratio=0.0),
    "cifar": dict(dataset="cifar10", masking_ratio=0.0),
    "masked": dict(dataset="imagenet", masking_ratio=0.5),
}
STEPS, MASKED_STEPS = 32, 8
OFFICIAL_FILES = {"modules_QCFS": "modules_QCFS.py", "utils_QCFS": "utils_QCFS.py", "mst_official": "models/mst.py"}


def import_official(git_dir: str, commit: str) -> dict:
    """Import the official modules from ``git_dir`` at ``commit`` without writing them to disk."""
    mods = {}
    for name, path in OFFICIAL_FILES.items():
        src = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                             capture_output=True, text=True).stdout
        spec = importlib.util.spec_from_loader(name, loader=None)
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = f"<{commit}:{path}>"
        sys.modules[name] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - the official code, read above
        mods[name] = mod
    return mods


def randomise(model, g) -> dict:
    import torch

    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            x = torch.tensor(9)
        elif k.endswith("relative_position_index") or k.endswith("attn_mask"):
            x = v.clone()
        elif k.endswith(".up"):
            x = torch.rand(v.shape, generator=g) * 1.5 + 0.5
        elif k.endswith("running_mean"):
            x = torch.randn(v.shape, generator=g) * 0.3
        elif k.endswith("running_var"):
            x = torch.rand(v.shape, generator=g) + 0.5
        elif v.dim() == 1 and "norm" in k and k.endswith("weight"):
            x = torch.rand(v.shape, generator=g) + 0.5
        elif v.dim() == 1:
            x = torch.randn(v.shape, generator=g) * 0.2
        else:
            x = torch.randn(v.shape, generator=g) * (1.5 / v[0].numel() ** 0.5)
        sd[k] = x.half().float() if x.is_floating_point() and not k.endswith("attn_mask") else x
    model.load_state_dict(sd)
    return sd


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-git", required=True, help="git directory of bic-L/Masked-Spiking-Transformer")
    ap.add_argument("--commit", default="HEAD", help="official commit to read (the tests were made at 368c9a5)")
    ap.add_argument("--site", required=True, help="directory holding spikingjelly 0.0.0.0.12 and timm 0.6.7")
    ap.add_argument("--out", default=str(Path(__file__).with_name("mst_golden.safetensors")))
    args = ap.parse_args(argv)
    sys.path.insert(0, args.site)
    import torch
    from safetensors.torch import save_file

    mods = import_official(args.official_git, args.commit)
    from spikingjelly.clock_driven import functional

    commit = subprocess.run(["git", "--git-dir", args.official_git, "rev-parse", "--short", args.commit],
                            check=True, capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    floor, to_neuron = mods["utils_QCFS"].replace_activation_by_floor, mods["utils_QCFS"].replace_activation_by_neuron
    tensors, meta = {}, {}
    for i, (name, c) in enumerate(CASES.items()):
        g = torch.Generator().manual_seed(4321 + i)
        torch.manual_seed(0)
        model = floor(mods["mst_official"].MaskedSpikingTransformer(**SMALL, **c), t=16, threshold=2.0)
        sd = randomise(model, g)
        x = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).half().float()
        out = {}

        def fresh(dtype, **kw):
            m = floor(mods["mst_official"].MaskedSpikingTransformer(**SMALL, **c, **kw), t=16, threshold=2.0)
            m.load_state_dict(sd)
            return m.to(dtype).eval()

        with torch.no_grad():
            if c["masking_ratio"] == 0:
                ann = fresh(torch.float32)
                out["ann32"] = ann(x)
                snn = to_neuron(ann)
                out["snn32"] = torch.stack([snn(x) for _ in range(STEPS)])
                functional.reset_net(snn)
                # no drop path: the official masks draw from the global generator even at ratio 0 (ours do not),
                # so the drop-path draws that follow them could not line up
                train = fresh(torch.float64, drop_path_rate=0.0).train()
                out["train64"] = train(x.double())
                ann = fresh(torch.float64)
                out["ann64"] = ann(x.double())
                snn = to_neuron(ann)
                out["snn64"] = torch.stack([snn(x.double()) for _ in range(STEPS)])
            else:
                ann = fresh(torch.float64)
                torch.manual_seed(3)
                out["ann64"] = ann(x.double())
                snn = to_neuron(ann)
                torch.manual_seed(4)
                out["snn64"] = torch.stack([snn(x.double()) for _ in range(MASKED_STEPS)])
            functional.reset_net(snn)
        for k, v in sd.items():
            tensors[f"{name}.sd.{k}"] = v.half() if v.is_floating_point() and not k.endswith("attn_mask") else v
        tensors[f"{name}.input"] = x.half()
        for k, v in out.items():
            tensors[f"{name}.{k}"] = v.detach().clone()
        meta[name] = json.dumps({**SMALL, **c})
        print(name, "params", sum(p.numel() for p in model.parameters()), "ann |logit| max",
              out["ann64"].abs().max().item(), "snn step-1 vs last", out["snn64"][0, 0, :3].tolist(),
              out["snn64"][-1, 0, :3].tolist())
    meta["source"] = (f"bic-L/Masked-Spiking-Transformer models/mst.py, modules_QCFS.py, utils_QCFS.py (commit "
                      f"{commit}), spikingjelly 0.0.0.0.12, timm 0.6.7, torch {torch.__version__}, 1 thread")
    out_path = Path(args.out)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_path), metadata=meta)
    print("wrote", out_path, out_path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
