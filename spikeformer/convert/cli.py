"""``spikeformer convert``: run a QCFS-trained ANN as an SNN and report accuracy against simulation steps, SOPs and
energy for each Random Spike Masking ratio (``main.py --snnvalidate`` of the MST code, plus the energy count).

The checkpoint is a run directory of ``spikeformer train`` (its ``config.yaml`` names model and data), one of our
``.safetensors`` files, or an official checkpoint (then ``--model``). A safetensors file whose metadata holds
``ann_variant`` (``{"levels": 16, "threshold": 2.0}``) is the QCFS ANN of a spiking family
(:func:`~spikeformer.convert.ann2snn.ann_variant`, e.g. the conv baseline) and is rebuilt as such. The ANN is evaluated first, then converted
(:func:`spikeformer.convert.ann_to_snn`) and simulated for ``--steps`` steps on the test split, with the same input at
every step; accuracy is read after 1, 2, 4, ... steps from the outputs summed so far. SOPs and energy are counted on
the first ``--energy-samples`` test samples over all steps (:mod:`spikeformer.analysis.conversion_report`).
Results are printed and written (JSON, Markdown, a plot and an HTML page) to ``--out`` (default: ``RUN/conversion``
for a run directory, ``./conversion-<model>`` otherwise).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import torch

from ..errors import SpikeformerError


def _resolve(path: str, model: Optional[str], data: Optional[str], sets: dict) -> tuple[str, Path, dict, Optional[Path]]:
    """(model name, weights file, config, run directory) of a checkpoint argument."""
    from ..data import get_dataset_info
    from ..engine.config import DEFAULTS, load_config_file, merge
    from .checkpoint import read_metadata

    p = Path(path)
    run_cfg, run_dir = {}, None
    if p.is_dir():
        if (p / "config.yaml").is_file():
            run_cfg, run_dir = load_config_file(p / "config.yaml"), p
        p = p / "best.safetensors" if (p / "best.safetensors").is_file() else p / "last.safetensors"
    elif (p.parent / "config.yaml").is_file():
        run_cfg, run_dir = load_config_file(p.parent / "config.yaml"), p.parent
    if not p.is_file():
        raise SpikeformerError(f"checkpoint not found: {p}; pass a run directory of 'spikeformer train' or a file")
    meta = read_metadata(p) if p.suffix == ".safetensors" else {}
    name = model or meta.get("model") or run_cfg.get("model")
    if not name:
        raise SpikeformerError(f"{p} does not say which model it holds; pass --model NAME (e.g. mst_swin_t)")
    cfg = copy.deepcopy(DEFAULTS)
    merge(cfg, {k: v for k, v in run_cfg.items() if k in DEFAULTS}, str(p.parent / "config.yaml"))
    cfg["model"] = name
    cfg["data"] = data or meta.get("data") or run_cfg.get("data") or _model_data(name) or cfg["data"]
    merge(cfg, sets, "--set")
    kwargs = dict(meta.get("model_kwargs") or cfg.get("model_kwargs") or {})
    kwargs["num_classes"] = meta.get("num_classes") or get_dataset_info(cfg["data"]).num_classes
    cfg["model_kwargs"] = kwargs
    return name, p, cfg, run_dir


def _model_data(name: str) -> Optional[str]:
    from ..models import get_model_info

    return get_model_info(name).dataset


def _loader(cfg: dict, samples: Optional[int], batch_size: int):
    from torch.utils.data import DataLoader, Subset

    from ..data import build_dataset

    test = build_dataset(cfg["data"], "test", root=cfg.get("data_root"), **(cfg.get("data_kwargs") or {}))
    if samples is not None:
        test = Subset(test, range(min(samples, len(test))))
    if len(test) == 0:
        raise SpikeformerError(f"the test split of {cfg['data']!r} is empty")
    return DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=cfg.get("num_workers") or 0)


def _build(name: str, path: Path, cfg: dict):
    """The ANN of the checkpoint: the registered model, or the QCFS variant of a spiking family
    (:func:`~spikeformer.convert.ann2snn.ann_variant`) when the file's metadata names one."""
    from ..models import create_model
    from .ann2snn import ann_variant
    from .checkpoint import load_checkpoint, read_metadata

    variant = read_metadata(path).get("ann_variant") if path.suffix == ".safetensors" else None
    if isinstance(variant, dict):
        net = ann_variant(name, **variant, **cfg["model_kwargs"])
        return load_checkpoint(net, path)
    return create_model(name, checkpoint_path=str(path), numerics=cfg["numerics"], **cfg["model_kwargs"])


def _static(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise SpikeformerError(
            f"convert feeds one static input [B, C, H, W] at every step, but the data gives {tuple(x.shape)}; "
            "for event data use voxel grids (spikeformer.data.voxel), as the MST authors do")
    return x


def run_conversion(checkpoint: str, steps: int = 128, ratios=None, model: Optional[str] = None,
                   data: Optional[str] = None, data_root: Optional[str] = None, samples: Optional[int] = None,
                   batch_size: int = 64, energy_samples: int = 16, convention: str = "generic", seed: int = 0,
                   device: str = "cpu", sets: Optional[dict] = None, log=print) -> dict:
    """Evaluate the ANN of ``checkpoint``, convert it and simulate it for ``steps`` steps at each masking ratio of
    ``ratios`` (default: the model's own); returns the measurements (see ``write_conversion_report``)."""
    from ..analysis.conversion_report import snn_energy_report
    from .ann2snn import accuracy_over_time, ann_to_snn, set_masking_ratio, simulate, time_points

    if not isinstance(steps, int) or steps < 1:
        raise SpikeformerError(f"--steps must be a positive integer, not {steps!r}")
    name, path, cfg, run_dir = _resolve(checkpoint, model, data, dict(sets or {}))
    if data_root:
        cfg["data_root"] = data_root
    net = _build(name, path, cfg)
    dev = torch.device(device)
    snn = ann_to_snn(net).to(dev)  # refuses models without QCFS activations before any data is read
    net.to(dev).eval()
    if ratios is None:
        ratios = [float(getattr(net, "masking_ratio", 0.0))]
    ratios = sorted({float(r) for r in ratios})
    if any(r > 0 for r in ratios) and not any("masking_ratio" in vars(m) for m in net.modules()):
        raise SpikeformerError(f"{name} has no Random Spike Masking; run it with --masking-ratio 0 only")
    loader = _loader(cfg, samples, batch_size)
    points = time_points(steps)
    result = {"model": name, "checkpoint": str(path), "data": cfg["data"], "steps": steps, "points": points,
              "convention": convention, "curves": {}, "ann_top1": {}, "energy": [], "seed": seed}
    energy_x = []
    for x, _ in loader:
        energy_x.append(_static(x))
        if sum(len(e) for e in energy_x) >= energy_samples:
            break
    energy_x = torch.cat(energy_x)[:energy_samples].to(dev)
    for r in ratios:
        set_masking_ratio(net, r)
        set_masking_ratio(snn, r)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        n, ann_ok, correct = 0, 0, torch.zeros(steps, dtype=torch.long)
        with torch.no_grad():
            for x, y in loader:
                x, y = _static(x).to(dev), y.to(dev)
                ann_ok += int((net(x).argmax(-1) == y).sum())
                correct += accuracy_over_time(simulate(snn, x, steps), y).cpu()
                n += len(y)
        acc = (100.0 * correct.double() / n).tolist()
        result["n"] = n
        result["ann_top1"][r] = 100.0 * ann_ok / n
        result["curves"][r] = {t: acc[t - 1] for t in range(1, steps + 1)}
        rep = snn_energy_report(snn, energy_x, steps, convention)
        tot = rep.totals()
        result["energy"].append({"ratio": r, "top1": acc[-1], "sops": tot["sops"], "macs": tot["macs"],
                                 "total_mj": tot["total_mj"], "ann_mj": tot["ann_mj"], "flops": tot["flops"],
                                 "firing_rate": tot["firing_rate"], "energy_samples": int(len(energy_x))})
        log(f"masking {100 * r:g} %: ANN top-1 {result['ann_top1'][r]:.2f} %, SNN top-1 after {steps} steps "
            f"{acc[-1]:.2f} %, {tot['sops'] / 1e6:.3f} M SOPs + {tot['macs'] / 1e6:.3f} M MACs = "
            f"{tot['total_mj']:.4f} mJ per sample ({time.perf_counter() - t0:.1f} s)")
    result["run_dir"] = None if run_dir is None else str(run_dir)
    return result


def cmd(args) -> int:
    """``spikeformer convert``: measure, print the tables, write the report."""
    from ..analysis.conversion_report import accuracy_table, masking_table, write_conversion_report
    from ..engine.config import parse_sets

    log = (lambda *_: None) if args.quiet else (lambda s: print(s, flush=True))
    result = run_conversion(args.checkpoint, steps=args.steps, ratios=args.masking_ratio, model=args.model,
                            data=args.data, data_root=args.data_root, samples=args.samples,
                            batch_size=args.batch_size, energy_samples=args.energy_samples,
                            convention=args.convention, seed=args.seed, device=args.device,
                            sets=parse_sets(args.set), log=log)
    curves = {r: c for r, c in result["curves"].items()}
    print(accuracy_table(curves, result["points"], result["ann_top1"]))
    print()
    print(masking_table(result["energy"], result["steps"]))
    if args.out:
        out = Path(args.out)
    elif result["run_dir"]:
        out = Path(result["run_dir"]) / "conversion"
    else:
        out = Path(f"conversion-{result['model']}")
    paths = write_conversion_report(result, out)
    print(f"wrote {paths['html']} (and conversion.json, conversion.md, conversion_accuracy.png)")
    return 0


def add_parser(subparsers) -> None:
    """Add ``convert`` to the CLI's subparsers."""
    from ..analysis.energy import CONVENTIONS

    c = subparsers.add_parser(
        "convert", help="run a QCFS-trained ANN (e.g. MST) as an SNN: accuracy against simulation steps, SOPs and "
        "energy per masking ratio")
    c.add_argument("--checkpoint", required=True, metavar="RUN_OR_FILE",
                   help="run directory of 'spikeformer train', a .safetensors of ours, or an official checkpoint "
                   "(then also --model)")
    c.add_argument("--model", help="model name, for checkpoints that do not record it")
    c.add_argument("--steps", type=int, default=128, help="simulation steps (default 128, as the MST paper)")
    c.add_argument("--masking-ratio", type=float, nargs="+", metavar="R",
                   help="Random Spike Masking ratio(s) to simulate, e.g. 0 0.5 0.75 (default: the model's)")
    c.add_argument("--data", help="dataset (default: the one the checkpoint was trained on)")
    c.add_argument("--data-root", help="dataset files, for datasets that need them")
    c.add_argument("--samples", type=int, help="use only the first N test samples (default: all)")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--energy-samples", type=int, default=16, help="test samples the SOPs are counted on")
    c.add_argument("--convention", default="generic", choices=sorted(CONVENTIONS), help="energy convention")
    c.add_argument("--seed", type=int, default=0, help="seed of the masks")
    c.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    c.add_argument("--out", help="directory for conversion.{json,md,html} and the plot")
    c.add_argument("--quiet", action="store_true", help="print only the tables")
    c.set_defaults(func=cmd)
