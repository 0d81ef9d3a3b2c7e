"""The ``spikeformer`` command line: train, eval, models, datasets, convert (ANN to SNN), convert-checkpoint,
export-nir, import-nir, reconstruct, energy, report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .errors import SpikeformerError


def count_params(name: str) -> int:
    """Parameter count of a registered model, built on the meta device (no memory, no init cost)."""
    import torch

    from .models import create_model

    try:
        with torch.device("meta"):
            model = create_model(name)
    except Exception:  # a family whose init needs real tensors
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def models_table(markdown: bool = False) -> str:
    from .models import get_model_info, list_models

    rows = []
    for name in list_models():
        i = get_model_info(name)
        pub = ", ".join(f"{d} {a:.2f}" for d, a in i.published.items()) or "-"
        size = "x".join(str(s) for s in i.input_size)
        rows.append((name, i.family, f"{count_params(name) / 1e6:.2f}M", size, str(i.T), str(i.num_classes), pub))
    head = ("model", "family", "params", "input", "T", "classes", "published top-1 (%)")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def _print_metrics(m: dict) -> None:
    print(f"top-1: {m['top1']:.2f}%  top-5: {m['top5']:.2f}%  loss: {m['loss']:.4f}", flush=True)


def cmd_train(args) -> int:
    from .engine import build_config, train
    from .engine.config import load_config_file

    cli = {"model": args.model, "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
           "out": args.out, "task": args.task}
    if args.resume:
        from pathlib import Path

        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise SpikeformerError(f"{run} is not a run directory (no config.yaml); pass the directory a run wrote")
        saved = load_config_file(run / "config.yaml")
        cfg = build_config(None, args.set, **{**saved, **{k: v for k, v in cli.items() if v is not None},
                                              "out": str(run)})
        result = train(cfg, resume=str(run), progress=not args.quiet, bars=args.progress)
    else:
        cfg = build_config(args.config, args.set, **cli)
        result = train(cfg, progress=not args.quiet, bars=args.progress)
    if "top1" in result:
        if cfg.get("report") and _is_main():
            _write_report(result["run_dir"], args.quiet)
        _print_metrics(result)
    elif "psnr" in result:
        print(f"PSNR: {result['psnr']:.2f} dB  SSIM: {result['ssim']:.4f}", flush=True)
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _write_report(run_dir: str, quiet: bool) -> None:
    try:
        from .analysis.report import write_report
    except ImportError:
        return
    path = write_report(run_dir)
    if not quiet:
        print(f"report: {path}")


def cmd_eval(args) -> int:
    from .engine import evaluate_checkpoint
    from .engine.config import parse_sets

    m = evaluate_checkpoint(args.checkpoint, data=args.data, model=args.model, sets=parse_sets(args.set),
                            progress=not args.quiet)
    print(f"{m['model']} on {m['data']} ({m['n']} samples)")
    if "psnr" in m:
        print(f"PSNR: {m['psnr']:.2f} dB  SSIM: {m['ssim']:.4f}")
    else:
        _print_metrics(m)
    return 0


def cmd_models(args) -> int:
    if args.json:
        from .models import get_model_info, list_models

        print(json.dumps([{**get_model_info(n).as_dict(), "params": count_params(n)} for n in list_models()],
                         indent=1))
    else:
        print(models_table(markdown=args.markdown))
    return 0


def cmd_datasets(args) -> int:
    from .data import get_dataset_info, list_datasets

    for n in list_datasets():
        i = get_dataset_info(n)
        where = "embedded" if not i.needs_root else "needs --set data_root=DIR"
        print(f"{n:<16} {i.kind:<7} {i.num_classes:>5} classes  {'x'.join(map(str, i.input_size)):<10} {where}  "
              f"{i.description}")
    return 0


def cmd_convert(args) -> int:
    from .convert import save_weights
    from .models import create_model

    model = create_model(args.model, checkpoint_path=args.input, **({"num_classes": args.num_classes}
                                                                      if args.num_classes else {}))
    meta = {"model": args.model, "num_classes": model.num_classes, "T": getattr(model, "T", None),
            "source": str(args.input)}
    save_weights(model, args.output, meta)
    print(f"wrote {args.output} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikeformer", description="Spiking transformers: train, evaluate, analyse.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (no arguments: the default model on the embedded digits)")
    t.add_argument("--model", help="registered model name (see 'spikeformer models')")
    t.add_argument("--data", help="dataset name (see 'spikeformer datasets')")
    t.add_argument("--task", choices=["classify", "reconstruct"], help="classify (default) or reconstruct "
                   "(spike-camera images, e.g. --data spikecam-digits)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    t.add_argument("--config", help="YAML recipe file (e.g. configs/<recipe>.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    t.add_argument("--out", help="run directory")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--quiet", action="store_true", help="print nothing but the final metrics")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal; otherwise one line per epoch and every "
                   "log_every steps)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--checkpoint", required=True, help="a .safetensors of ours, a run directory, or an official "
                   "checkpoint (then also --model)")
    e.add_argument("--data")
    e.add_argument("--model", help="model name, for checkpoints that do not record it")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("models", help="list the registered models")
    m.add_argument("--markdown", action="store_true")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("datasets", help="list the datasets")
    d.set_defaults(func=cmd_datasets)

    c = sub.add_parser("convert-checkpoint", help="convert an official checkpoint to our safetensors format")
    c.add_argument("--model", required=True)
    c.add_argument("--num-classes", type=int)
    c.add_argument("input")
    c.add_argument("output")
    c.set_defaults(func=cmd_convert)

    from .convert.nir_cli import add_parsers as add_nir_parsers

    add_nir_parsers(sub)

    from .convert import cli as convert_cli

    convert_cli.add_parser(sub)

    from .engine.reconstruct import add_parser as add_reconstruct_parser

    add_reconstruct_parser(sub)

    try:
        from .analysis.commands import add_commands
    except ImportError:
        pass
    else:
        add_commands(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpikeformerError as e:
        print(f"spikeformer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikeformer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
