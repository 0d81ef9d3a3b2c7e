"""Write ``spikeformer_li_golden.safetensors``: logits of the *official* Spikeformer (Li et al.) on fixed weights.

Not run by the test suite. It needs the official repository (never copied into this one) and the releases its
``requirements.txt`` pins, SpikingJelly 0.0.0.0.10 and einops 0.4.1, installed outside the project::

    pip install --no-deps --target /tmp/sj010 spikingjelly==0.0.0.0.10 einops==0.4.1
    git clone https://github.com/Loydian/Spikeformer /tmp/Spikeformer   # or any git dir of it
    python tests/data/spikeformer_li_make_golden.py --official-git /tmp/Spikeformer/.git --site /tmp/sj010 \\
        [--commit HEAD] [--out tests/data/spikeformer_li_golden.safetensors]

``dvscifar10/{spikeformer,neuron,utils}.py`` are read from the git directory (``git show``; the three dataset folders
hold identical copies) and imported from memory. The official neurons default to ``backend='torch'`` already. One
thread, as the tests pin it: another thread count may split a convolution's or a GEMM's sums differently.

Two small models are built with the official ``Spikeformer`` class: a PLIF model with an int-stride k=5 tokenizer on
event-count frames (like ``PLIF_spikeformer_7_5x3x1``) and a PLIAF model with a stride-list k=3 tokenizer on images
repeated over T (like ``PLIAF_spikeformer_7_3x2x4``). Every weight is random (``temporal_fc`` and ``time_embed``
too, so that every branch reaches the logits), rounded to fp16 so the file stays small (the official model runs on
exactly those values in fp32). Per model the file stores the official state_dict (``<case>.sd.<official key>``), an
input in our layout (frames ``[T, B, C, H, W]``, images ``[B, C, H, W]``), the logits of one training-mode forward
after ``torch.manual_seed(<case>.seed)`` (batch statistics, stochastic depth masks drawn by the official code), the
BatchNorm running statistics that forward leaves (``<case>.train.<official key>``), and the eval-mode logits.

The outputs differ in the last bits between kinds of CPU (the official code's as ours), so the file is recorded once per
kind (``tests/helpers.py`` ``cpu_kind``): ``spikeformer_li_golden.safetensors`` on an AMD AVX2 CPU,
``spikeformer_li_golden_<kind>.safetensors`` on the others (``--out``, e.g. ``_avx512`` on AMD with AVX512, ``_avx512_intel`` on
Intel); the tests pick the one of the machine they run on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

CASES = {
    "plif_events": dict(
        kernel_size=5, stride=2, padding=2, n_conv_layers=2, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
        img_size=16, num_frames=4, n_input_channels=2, num_classes=5, neuron="plif", drop_path_rate=0.1,
        input=[4, 2, 2, 16, 16], seed=11,
    ),
    "pliaf_images": dict(
        kernel_size=3, stride=[2, 1, 2, 1], padding=1, n_conv_layers=4, embed_dim=32, depth=2, num_heads=4,
        mlp_ratio=3, img_size=16, num_frames=3, n_input_channels=3, num_classes=7, neuron="pliaf",
        drop_path_rate=0.2, input=[2, 3, 16, 16], seed=12,
    ),
}
OFFICIAL_FILES = (("utils", "dvscifar10/utils.py"), ("neuron", "dvscifar10/neuron.py"),
                  ("official_spikeformer", "dvscifar10/spikeformer.py"))


def import_official(git_dir: str, commit: str):
    """Import the official ``spikeformer.py`` (and the ``utils``/``neuron`` modules it imports) from memory."""
    for name, path in OFFICIAL_FILES:
        src = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                             capture_output=True, text=True).stdout
        src = src.replace("backend='cupy'", "backend='torch'")
        spec = importlib.util.spec_from_loader(name, loader=None)
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = f"<{commit}:{path}>"
        sys.modules[name] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - the official code, read above
    return sys.modules["official_spikeformer"], sys.modules["neuron"]


def build(official, neuron_mod, c):
    from spikingjelly.clock_driven.neuron import MultiStepParametricLIFNode

    act = neuron_mod.MultiStepParametricLIAFNode if c["neuron"] == "pliaf" else MultiStepParametricLIFNode
    return official.Spikeformer(
        kernel_size=c["kernel_size"], stride=c["stride"], padding=c["padding"], n_conv_layers=c["n_conv_layers"],
        n_input_channels=c["n_input_channels"], img_size=c["img_size"], num_classes=c["num_classes"],
        num_frames=c["num_frames"], mlp_ratio=c["mlp_ratio"], drop_path_rate=c["drop_path_rate"],
        embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"], act_layer=act)


def randomise(model, g):
    import torch

    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
            continue
        if k.endswith(".w"):  # PLIF/PLIAF: 1/tau = sigmoid(w)
            x = torch.randn(v.shape, generator=g) * 0.5
        elif k.endswith("running_mean"):
            x = torch.randn(v.shape, generator=g) * 0.2
        elif k.endswith("running_var"):
            x = torch.rand(v.shape, generator=g) + 0.5
        elif v.dim() == 1 and ("norm" in k or ".1.weight" in k):  # LayerNorm and BatchNorm scales
            x = torch.rand(v.shape, generator=g) + 0.5
        elif v.dim() == 1:  # biases and BatchNorm shifts
            x = torch.randn(v.shape, generator=g) * 0.3
        elif "embed" in k:
            x = torch.randn(v.shape, generator=g) * 0.5
        else:
            x = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        sd[k] = x.half().float()
    model.load_state_dict(sd)
    return sd


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-git", required=True, help="git directory of Loydian/Spikeformer")
    ap.add_argument("--commit", default="HEAD", help="official commit to read (the tests were made at its only "
                                                     "commit, 2022-08-15)")
    ap.add_argument("--site", required=True, help="directory holding spikingjelly 0.0.0.0.10 and einops 0.4.1")
    ap.add_argument("--out", default=str(Path(__file__).with_name("spikeformer_li_golden.safetensors")))
    args = ap.parse_args(argv)
    sys.path.insert(0, args.site)
    import torch
    from safetensors.torch import save_file
    from spikingjelly.clock_driven import functional

    official, neuron_mod = import_official(args.official_git, args.commit)
    commit = subprocess.run(["git", "--git-dir", args.official_git, "rev-parse", "--short", args.commit],
                            check=True, capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    tensors, meta = {}, {}
    for i, (name, c) in enumerate(CASES.items()):
        g = torch.Generator().manual_seed(1234 + i)
        model = build(official, neuron_mod, c)
        sd = randomise(model, g)
        shape = c["input"]
        if len(shape) == 4:  # images; the official training script repeats them over T before the model
            x = (torch.rand(shape, generator=g) * 2 - 1).half().float()
            x_off = x.unsqueeze(1).repeat(1, c["num_frames"], 1, 1, 1)
        else:  # event-count frames, ours [T, B, ...]; the official forward takes [B, T, ...]
            x = (torch.rand(shape, generator=g) < 0.3).float() * torch.randint(1, 3, shape, generator=g)
            x_off = x.transpose(0, 1)
        model.train()
        torch.manual_seed(c["seed"])
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
            if "running" in k:
                tensors[f"{name}.train.{k}"] = v.clone()
        tensors[f"{name}.input"] = x.half()
        tensors[f"{name}.train_logits"] = train_logits
        tensors[f"{name}.eval_logits"] = eval_logits
        meta[name] = json.dumps(c)
        print(name, "params", sum(p.numel() for p in model.parameters()), "eval logits", eval_logits.tolist())
    meta["source"] = (f"Loydian/Spikeformer dvscifar10/spikeformer.py (commit {commit}), spikingjelly 0.0.0.0.10 "
                      f"backend torch, einops 0.4.1, torch {torch.__version__}, 1 thread")
    out = Path(args.out)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
    print("wrote", out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
