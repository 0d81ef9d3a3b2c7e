"""Write ``spikeformer_recon_golden.safetensors``: outputs of the *official* SpikeFormer (spike-camera
reconstruction) and of its losses, on fixed weights and inputs.

Not run by the test suite. It needs the official repository (never copied into this one) and einops 0.4.1 (the
release its requirements.yml pins), installed outside the project::

    pip install --no-deps --target /tmp/sf_site einops==0.4.1
    git clone https://github.com/O-OoOvO/SpikeFormer /tmp/SpikeFormer       # or any git dir of it
    python tests/data/spikeformer_recon_make_golden.py --official-git /tmp/SpikeFormer/.git --site /tmp/sf_site \\
        [--commit HEAD] [--out tests/data/spikeformer_recon_golden.safetensors]

``Model/SpikeFormer.py`` and ``Model/Loss.py`` are read from the git directory (``git show``) and imported from
memory. ``MiT.forward`` casts with ``x.type(torch.cuda.FloatTensor)``, which needs a GPU; on the CPU the generator
points ``torch.cuda.FloatTensor`` at ``torch.FloatTensor`` (the same float32 tensor, on the CPU) before running it.

Stored:

* ``sd.<key>``: the state_dict (official key names) of a small official model: 5 input frames, dims 8-16-24-32,
  heads 1-2-3-4, expansion 2, reduction 8-4-2-1, layers 1-2-1-1, decoder 256 (the official head hard-codes
  256+64+16+4 input channels), random weights rounded to fp16 so the file stays small;
* ``spikes``: uint8 0/1 windows [2, 5, 18, 40]; ``x``: the official data loader's input made from them (3 zero rows
  above and below, then ``x * 2 - 1``, stored as int8); ``y``: the official forward of ``x`` in float32 on one
  thread; ``image``: the official evaluation's uint8 image (rows 3:-3, clamped, ``(y + 1) / 2 * 255`` truncated);
* ``loss.pred``, ``loss.target`` [2, 1, 18, 40] in [-1, 1] and the official ``CharbonnierLoss``, ``EdgeLoss`` and
  ``VGGLoss4`` of them (``loss.charbonnier``, ``loss.edge``, ``loss.perceptual``: float64 scalars of the float32
  results); the VGG weights are :func:`vgg_weights` of ``loss.vgg_seed``, so the test rebuilds them;
* metadata ``published``: key -> shape of the published configuration (65 frames, dims 32-64-160-256, ...) and its
  parameter count, to check that official checkpoints load strictly.

The outputs differ in the last bits between kinds of CPU (the official code's as ours), so the file is recorded once per
kind (``tests/helpers.py`` ``cpu_kind``): ``spikeformer_recon_golden.safetensors`` on an AMD AVX2 CPU,
``spikeformer_recon_golden_<kind>.safetensors`` on the others (``--out``, e.g. ``_avx512`` on AMD with AVX512, ``_avx512_intel`` on
Intel); the tests pick the one of the machine they run on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL = dict(inputDim=5, dims=(8, 16, 24, 32), heads=(1, 2, 3, 4), ff_expansion=(2, 2, 2, 2),
             reduction_ratio=(8, 4, 2, 1), num_layers=(1, 2, 1, 1), decoder_dim=256, out_channel=1)
PUBLISHED = dict(inputDim=65, dims=(32, 64, 160, 256), heads=(1, 2, 5, 8), ff_expansion=(8, 8, 4, 4),
                 reduction_ratio=(8, 4, 2, 1), num_layers=2, decoder_dim=256, out_channel=1)


VGG_SEED = 19
VGG_SHAPES = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128)}  # conv1_1 .. conv3_1


def vgg_weights(seed: int) -> dict:
    """A VGG19 state_dict up to conv3_1 (keys features.0 .. features.10) drawn from ``seed`` (He-scaled)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (o, c) in VGG_SHAPES.items():
        sd[f"features.{i}.weight"] = torch.randn(o, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(o, generator=g) * 0.01
    return sd


def import_official(git_dir: str, commit: str, path: str, name: str):
    src = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                         capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = f"<{commit}:{path}>"
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - the official code, read above
    return mod


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-git", required=True, help="git directory of O-OoOvO/SpikeFormer")
    ap.add_argument("--commit", default="HEAD", help="official commit to read (the tests were made at 724a64a)")
    ap.add_argument("--site", required=True, help="directory holding einops 0.4.1")
    ap.add_argument("--out", default=str(Path(__file__).with_name("spikeformer_recon_golden.safetensors")))
    args = ap.parse_args(argv)
    sys.path.insert(0, args.site)
    import torch
    from safetensors.torch import save_file

    net = import_official(args.official_git, args.commit, "Model/SpikeFormer.py", "spikeformer_official")
    loss = import_official(args.official_git, args.commit, "Model/Loss.py", "spikeformer_official_loss")
    commit = subprocess.run(["git", "--git-dir", args.official_git, "rev-parse", "--short", args.commit],
                            check=True, capture_output=True, text=True).stdout.strip()
    if not torch.cuda.is_available():
        torch.cuda.FloatTensor = torch.FloatTensor  # MiT.forward's cast, on the CPU
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(20221012)

    torch.manual_seed(0)
    model = net.SpikeFormer(**SMALL).eval()
    sd = {}
    for k, v in model.state_dict().items():
        if v.dim() == 1 and "norm" in k and k.endswith("weight"):
            x = torch.rand(v.shape, generator=g) + 0.5
        elif v.dim() == 1:
            x = torch.randn(v.shape, generator=g) * 0.2
        else:
            x = torch.randn(v.shape, generator=g) * (1.0 / v[0].numel() ** 0.5)
        sd[k] = x.half().float()
    model.load_state_dict(sd)
    spikes = (torch.rand(2, 5, 18, 40, generator=g) < 0.3).to(torch.uint8)
    x = torch.nn.functional.pad(spikes.float(), (0, 0, 3, 3)) * 2 - 1
    with torch.no_grad():
        y = model(x)
    img = ((y.squeeze(1)[:, 3:-3].clamp(-1, 1).numpy() + 1.0) / 2.0 * 255.0).astype("uint8")

    pred = torch.rand(2, 1, 18, 40, generator=g) * 2 - 1
    target = (pred + 0.3 * torch.randn(pred.shape, generator=g)).clamp(-1, 1)
    charb = loss.CharbonnierLoss()(target, pred)
    edge = loss.EdgeLoss()(target, pred)
    # VGGLoss4 reads its weights from a file: seeded weights (the test rebuilds them with vgg_weights) in a temp file
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(vgg_weights(VGG_SEED), f"{tmp}/vgg.pth")
        perceptual = loss.VGGLoss4(f"{tmp}/vgg.pth")(target, pred)

    published = net.SpikeFormer(**PUBLISHED)
    meta = {"commit": commit, "small": json.dumps(SMALL),
            "published": json.dumps({k: list(v.shape) for k, v in published.state_dict().items()}),
            "published_params": str(sum(p.numel() for p in published.parameters()))}
    tensors = {f"sd.{k}": v.half() for k, v in sd.items()}
    tensors.update(spikes=spikes, x=x.to(torch.int8), y=y, image=torch.from_numpy(img))
    tensors.update({"loss.pred": pred, "loss.target": target,
                    "loss.charbonnier": charb.double().reshape(1), "loss.edge": edge.double().reshape(1),
                    "loss.perceptual": perceptual.double().reshape(1), "loss.vgg_seed": torch.tensor([VGG_SEED])})
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out, metadata=meta)
    print(f"wrote {args.out}: official {commit}, y range [{y.min():.3f}, {y.max():.3f}], "
          f"charbonnier {charb.item():.6f}, edge {edge.item():.6f}, perceptual {perceptual.item():.6f}, "
          f"published params {meta['published_params']}")


if __name__ == "__main__":
    main()
