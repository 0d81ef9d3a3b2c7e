"""CLI subcommands of the analysis package: ``spikeformer energy`` and ``spikeformer report``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..errors import SpikeformerError


def _inputs(args, model, info):
    """A batch of real test samples (``--data``, else the model's own dataset when it ships embedded)."""
    from ..data import get_dataset_info
    from .report import _load_samples

    data = args.data
    if data is None:
        try:
            if not get_dataset_info(info.dataset).needs_root or args.data_root:
                data = info.dataset
        except SpikeformerError:
            data = None
    if data is not None:
        x, _ = _load_samples({"data": data, "data_root": args.data_root}, getattr(model, "T", None), args.samples)
        return x, data
    g = torch.Generator().manual_seed(0)
    x = torch.rand((args.samples, *info.input_size), generator=g)
    return x, None


def cmd_energy(args) -> int:
    from ..models import create_model, get_model_info
    from .energy import energy_report

    info = get_model_info(args.model)
    if args.samples < 1:
        raise SpikeformerError(f"--samples must be at least 1, not {args.samples}")
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    model = create_model(args.model, checkpoint_path=args.checkpoint, **kwargs)
    torch.manual_seed(0)
    x, data = _inputs(args, model, info)
    rep = energy_report(model, x, convention=args.convention, e_mac=args.e_mac, e_ac=args.e_ac)
    print(rep.table())
    if data is None:
        print(f"note: no data given and {info.dataset!r} needs files, so the input was uniform noise; firing rates "
              "of real data differ (pass --data NAME [--data-root DIR])")
    out = Path(args.out or ".")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"energy_{args.model}_{rep.convention}"
    d = rep.as_dict()
    d["totals"].update(data=data, checkpoint=args.checkpoint)
    (out / f"{stem}.json").write_text(json.dumps(d, indent=1))
    fields = ["name", "op", "module", "inputs", "calls", "steps", "flops", "dense_macs", "rate", "sops", "macs",
              "energy_mj", "counted", "note"]
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in d["layers"]:
            w.writerow(r)
    print(f"wrote {out / (stem + '.csv')} and {out / (stem + '.json')}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir, samples=args.samples, convention=args.convention)
    print(f"report: {path}")
    return 0


def add_commands(subparsers) -> None:
    """Add ``energy`` and ``report`` to the CLI's subparsers; each sets ``func(args) -> int``."""
    from .energy import CONVENTIONS

    e = subparsers.add_parser("energy", help="SOPs, MACs, energy and firing rates of a model, per layer")
    e.add_argument("--model", required=True, help="registered model name (see 'spikeformer models')")
    e.add_argument("--checkpoint", help="weights to load (ours or the family's official checkpoint)")
    e.add_argument("--data", help="dataset whose test samples are fed (default: the model's, if embedded)")
    e.add_argument("--data-root", help="dataset files, for datasets that need them")
    e.add_argument("--convention", default="generic", choices=sorted(CONVENTIONS),
                   help="energy accounting of a paper (default: generic)")
    e.add_argument("--samples", type=int, default=16, help="test samples to average over (default 16)")
    e.add_argument("--num-classes", type=int)
    e.add_argument("--e-mac", type=float, default=4.6, help="pJ per MAC (default 4.6, 45 nm fp32)")
    e.add_argument("--e-ac", type=float, default=0.9, help="pJ per AC (default 0.9, 45 nm fp32)")
    e.add_argument("--out", help="directory for the CSV and JSON files (default: current directory)")
    e.set_defaults(func=cmd_energy)

    r = subparsers.add_parser("report", help="write RUN_DIR/report.html (metrics, curves, energy, firing rates)")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--samples", type=int, default=16, help="test samples for energy and firing rates")
    r.add_argument("--convention", choices=sorted(CONVENTIONS), help="energy convention (default: generic)")
    r.set_defaults(func=cmd_report)
