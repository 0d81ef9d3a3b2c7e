"""``spikeformer export-nir`` and ``spikeformer import-nir``: write a model as a NIR graph (``.nir``), and read one
back to check that spikeformer runs it (:mod:`spikeformer.convert.nir`)."""

from __future__ import annotations

from typing import Optional

from ..errors import SpikeformerError


def cmd_export_nir(args) -> int:
    from ..engine.config import parse_sets
    from ..models import create_model
    from .nir import write_nir

    overrides = parse_sets(args.set)
    if args.num_classes:
        overrides["num_classes"] = args.num_classes
    model = create_model(args.model, checkpoint_path=args.checkpoint, **overrides).eval()
    shape = tuple(args.input_size) if args.input_size else None
    meta = {"checkpoint": str(args.checkpoint)} if args.checkpoint else {}
    path = write_nir(model, args.output, input_shape=shape, dt=args.dt, metadata=meta)
    print(f"wrote {path} ({args.model}, dt={args.dt:g} s; the classifier output is averaged over T="
          f"{getattr(model, 'T', '?')} steps)")
    return 0


def run_import(path: str, T: Optional[int] = None, batch_size: int = 2, dt: Optional[float] = None,
               seed: int = 0) -> dict:
    """Read ``path`` and run it on a random input; returns the module, its summary, output shape and per-node
    firing rates (fraction of 1s in the output of every neuron node)."""
    import torch

    from .nir import read_nir

    net = read_nir(path, dt=dt).eval()
    if net.input_shape is None:
        raise SpikeformerError(f"{path}: the graph's Input node has no shape; spikeformer cannot run it")
    steps = T or net.T or 4
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(steps, batch_size, *net.input_shape, generator=g)
    rates = {}
    hooks = [net.layers[net.keys[n]].register_forward_hook(
        lambda _m, _i, out, n=n: rates.__setitem__(n, float(out.float().mean())))
        for n, kind in net.node_types.items() if kind in ("IF", "LIF")]
    try:
        with torch.no_grad():
            y = net(x)
    finally:
        for h in hooks:
            h.remove()
    return {"net": net, "summary": net.summary(), "T": steps, "output_shape": tuple(y.shape), "rates": rates}


def cmd_import_nir(args) -> int:
    r = run_import(args.input, T=args.T, batch_size=args.batch_size, dt=args.dt)
    net = r["net"]
    print(r["summary"])
    print(f"\nran {r['T']} steps on a random [T, B={args.batch_size}, {', '.join(map(str, net.input_shape))}] "
          f"input: output {list(r['output_shape'])}; dt={net.dt:g} s")
    for n, rate in r["rates"].items():
        print(f"  {n:<24} firing rate {100 * rate:.1f} %")
    return 0


def add_parsers(subparsers) -> None:
    """Add ``export-nir`` and ``import-nir`` to the CLI's subparsers."""
    from .nir import DEFAULT_DT

    e = subparsers.add_parser("export-nir", help="write a conv/linear/pool/neuron model (e.g. spiking_convnet_cifar10) "
                              "as a NIR graph (.nir)")
    e.add_argument("--model", required=True, help="registered model name")
    e.add_argument("--checkpoint", help="weights: a .safetensors of ours, a run directory or an official checkpoint")
    e.add_argument("--num-classes", type=int, help="classes of the checkpoint, if not the model's default")
    e.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="one sample's shape (default: the model's)")
    e.add_argument("--dt", type=float, default=DEFAULT_DT,
                   help=f"simulator time step in seconds that NIR's LIF tau is given in (default {DEFAULT_DT:g}, "
                   "as the NIR paper and snnTorch)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --set neuron=lif or --set T=8")
    e.add_argument("output", help="the .nir file to write")
    e.set_defaults(func=cmd_export_nir)

    i = subparsers.add_parser("import-nir", help="read a NIR graph (.nir), list the layers spikeformer runs it with "
                              "and run it once on a random input")
    i.add_argument("input", help="a .nir file")
    i.add_argument("--T", type=int, help="time steps (default: the graph's, else 4)")
    i.add_argument("--batch-size", type=int, default=2)
    i.add_argument("--dt", type=float, help="the graph's time step in seconds (default: recorded in the file, else "
                   f"{DEFAULT_DT:g})")
    i.set_defaults(func=cmd_import_nir)
