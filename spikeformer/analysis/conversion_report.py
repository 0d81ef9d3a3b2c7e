"""What a converted SNN costs and how fast it converges: energy over the simulated steps, tables and a plot.

:func:`snn_energy_report` counts a converted network (:func:`spikeformer.convert.ann_to_snn`) over ``steps``
simulation steps with the watcher of :mod:`spikeformer.analysis.energy` (every ``F.linear``, convolution and matrix
product, attributed to the module that ran it). A converted neuron outputs ``spike * up`` (its QCFS threshold), so
an input whose nonzero entries all share one positive value counts as spikes: its firing rate is the fraction of
nonzero entries, and each of them is an accumulate (the scale folds into the next layer's weights). Everything else
follows the chosen convention (``generic`` by default: real-valued inputs, e.g. the image entering the patch
embedding at every step, BatchNorm'd residual streams entering a patch merging, the pooled LayerNorm features
entering the head, are charged as MACs; a product of a real tensor with spikes, e.g. softmax @ v, as accumulates at
the spikes' rate). Totals are per input sample over all steps; ``flops`` is one step of the ANN counterpart.
Masking drops spikes before the products that read them, so it lowers the SOPs of those products.

:func:`accuracy_table`, :func:`masking_table` and :func:`plot_accuracy_over_time` present what ``spikeformer
convert`` measured; :func:`write_conversion_report` writes them (JSON, Markdown, PNG and a self-contained HTML page)
atomically into a directory.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..convert.ann2snn import ScaledIF, iter_simulate
from ..errors import SpikeformerError
from ..layers.numerics import numerics
from .energy import (E_AC_PJ, E_MAC_PJ, Convention, EnergyReport, NeuronRow, _conv_fanout, _kind, _mean_abs,
                     _Watcher, get_convention)


def event_kind(x: torch.Tensor) -> tuple[str, Optional[float]]:
    """``('spike', rate)`` for binary tensors and for scaled spikes (every nonzero entry one positive value), where
    ``rate`` is the fraction of nonzero entries; otherwise ``(kind, None)`` with the kind of ``energy._kind``."""
    kind = _kind(x)
    if kind == "spike":
        return kind, float((x.detach() != 0).double().mean()) if x.numel() else 0.0
    nz = x.detach()[x.detach() != 0]
    if nz.numel() and float(nz[0]) > 0 and bool((nz == nz[0]).all()):
        return "spike", nz.numel() / x.numel()
    return kind, None


class _ConvertedWatcher(_Watcher):
    """The energy watcher, with scaled spikes counted as spikes; every op's row accumulates over all steps."""

    def _linear(self, args, kwargs, out):
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        row = self._row("linear", True)
        dense = float(x.numel() // max(w.shape[-1], 1)) * w.shape[-1] * w.shape[0]
        kind, rate = event_kind(x)
        events = (x.detach() != 0) if kind == "spike" else x.detach().abs()
        self._charge(row, kind, dense, x, float(events.double().sum()) * w.shape[0], rate)

    def _conv(self, op, args, kwargs, out):
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        names = ("stride", "padding", "dilation", "groups")
        params = dict(zip(names, args[3:7]))
        params.update({k: kwargs[k] for k in names if k in kwargs})
        row = self._row(op, True)
        dense = float(out.numel()) * (w.shape[1] * math.prod(w.shape[2:]))
        kind, rate = event_kind(x)
        exact = None
        if self.conv.count == "exact":
            src = (x.detach() != 0).to(x.dtype) if kind == "spike" else x
            exact = _conv_fanout(src, w, int(params.get("groups", 1)), params)
        self._charge(row, kind, dense, x, exact, rate)

    def _pair(self, row, a, b, dense, exact_ok=True):
        (ka, ra), (kb, rb) = event_kind(a), event_kind(b)
        exact = None
        if ka == "spike" and kb == "spike":
            src, rate = (a, ra) if ra <= rb else (b, rb)
            if a.dim() >= 2 and b.dim() >= 2:
                na, nb = (a.detach() != 0).double(), (b.detach() != 0).double()
                exact = float((na.sum(-2) * nb.sum(-1)).sum())
        elif ka == "spike" or kb == "spike":
            src, rate = (a, ra) if ka == "spike" else (b, rb)
        else:
            ra, rb = _mean_abs(a), _mean_abs(b)
            src, rate = (a, ra) if ra <= rb else (b, rb)
        self._charge(row, f"{ka} x {kb}", dense, src, exact, rate)


def _cfg_name(model: nn.Module, key: str) -> Optional[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (cfg.get(key) or None) if isinstance(cfg, dict) else None


def snn_energy_report(snn: nn.Module, x: torch.Tensor, steps: int, convention: Union[str, Convention] = "generic",
                      e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> EnergyReport:
    """SOPs, MACs, energy and firing rates of a converted network fed ``x`` (``[B, ...]``) at each of ``steps``
    steps; per input sample, summed over the steps. The network runs its official operations (exact numerics)."""
    if not any(isinstance(m, ScaledIF) for m in snn.modules()):
        raise SpikeformerError("snn_energy_report counts a converted network; call ann_to_snn(model) first")
    conv = get_convention(convention)
    B = int(x.shape[0])
    names = {id(m): n for n, m in snn.named_modules()}
    watcher = _ConvertedWatcher(conv, steps, B, names)
    fired: dict[str, list] = {}
    sizes: dict[str, int] = {}

    def record(name, out):
        fired.setdefault(name, []).append(float((out.detach() != 0).double().sum()))
        sizes[name] = out.numel()

    hooks = []
    for name, m in snn.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, inp: watcher.push(mod)))
        hooks.append(m.register_forward_hook(lambda mod, inp, out: watcher.pop(mod)))
        if isinstance(m, ScaledIF):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, _n=name: record(_n, out)))
    try:
        with numerics(snn, "exact"), watcher:
            for _ in iter_simulate(snn, x, steps):
                pass
    finally:
        for h in hooks:
            h.remove()
    rows = list(watcher.rows.values())
    if not rows:
        raise SpikeformerError(f"{type(snn).__name__}: no Conv/Linear/matmul ran in the simulation; nothing to count")
    stem = next((r for r in rows if r.name == _cfg_name(snn, "first_conv")), rows[0])
    cls = next((r for r in rows if r.name == _cfg_name(snn, "classifier")), rows[-1])
    for r in rows:
        r.steps = steps
        r.dense_macs = r._dense_b / B
        r.rate = r._rate_num / r._rate_den if r._rate_den else 0.0
        r.inputs = ", ".join(r._kinds)
        sops, macs = r._events / B, r._macs_b / B
        if r is stem and conv.first == "mac":
            sops, macs, r.rate, r.note = 0.0, r.dense_macs, 1.0, "first layer: MAC"
        if r is stem and conv.first == "skip":
            r.counted, r.note = False, "stem excluded"
        if r is cls and conv.classifier == "skip":
            r.counted, r.note = False, "classifier excluded"
        r.sops, r.macs = sops, macs
        r.energy_mj = (sops * e_ac + (macs * e_mac if conv.mac_energy else 0.0)) * 1e-9
    neurons = [NeuronRow(name=n, module="ScaledIF", T=len(f), rates=[v / sizes[n] for v in f],
                         neurons=sizes[n] / B, spikes=sum(f) / B) for n, f in fired.items()]
    name = getattr(snn, "model_name", None) or type(snn).__name__
    return EnergyReport(model=name, convention=conv.name, T=steps, samples=B, layers=rows, neurons=neurons,
                        params=sum(p.numel() for p in snn.parameters()), e_mac=e_mac, e_ac=e_ac)


# ------------------------------------------------------------------------------------------------ tables and plot
def _ratio(r: float) -> str:
    return f"{100 * r:g} %"


def accuracy_table(curves: dict, points: Sequence[int], ann_top1: Optional[dict] = None) -> str:
    """Markdown: top-1 (%) of the converted SNN after t steps (rows) for each masking ratio (columns); ``curves``
    maps a ratio to ``{t: top-1}``, ``ann_top1`` a ratio to the ANN's top-1."""
    ratios = sorted(curves)
    head = "| t | " + " | ".join(f"SNN top-1 (%), masking {_ratio(r)}" for r in ratios) + " |"
    lines = [head, "|" + "---:|" * (len(ratios) + 1)]
    for t in points:
        lines.append(f"| {t} | " + " | ".join(f"{curves[r][t]:.2f}" for r in ratios) + " |")
    if ann_top1:
        lines.append("| ANN | " + " | ".join(f"{ann_top1[r]:.2f}" if r in ann_top1 else "-" for r in ratios) + " |")
    return "\n".join(lines)


def masking_table(rows: Sequence[dict], steps: int) -> str:
    """Markdown: per masking ratio, SNN top-1 after ``steps`` steps, SOPs and energy per sample over the steps, and
    the SOPs relative to the unmasked network (``rows``: dicts with ratio, top1, sops, macs, total_mj)."""
    base = next((r["sops"] for r in rows if r["ratio"] == 0), None)
    lines = [f"| masking ratio | SNN top-1 (%), t={steps} | SOPs / sample | MACs / sample | energy (mJ) / sample | "
             "SOPs vs. no masking |", "|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["ratio"]):
        rel = f"{100 * (r['sops'] / base - 1):+.1f} %" if base else "-"
        lines.append(f"| {_ratio(r['ratio'])} | {r['top1']:.2f} | {r['sops'] / 1e6:.3f} M | {r['macs'] / 1e6:.3f} M | "
                     f"{r['total_mj']:.4f} | {rel} |")
    return "\n".join(lines)


def plot_accuracy_over_time(curves: dict, ann_top1: Optional[dict] = None, out=None):
    """Top-1 (%) against simulation steps (log2 axis), one line per masking ratio; dashed: the ANN."""
    from .plots import _finish, plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, r in enumerate(sorted(curves)):
        ts = sorted(curves[r])
        line, = ax.plot(ts, [curves[r][t] for t in ts], marker="o", ms=3, label=f"SNN, masking {_ratio(r)}")
        if ann_top1 and r in ann_top1:
            ax.axhline(ann_top1[r], color=line.get_color(), ls="--", lw=1, label=f"ANN, masking {_ratio(r)}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("simulation steps t")
    ax.set_ylabel("top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, out)


def _write_atomic(path: Path, data: Union[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _md_to_html_table(md: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in md.splitlines() if r.strip()]
    head, body = rows[0], rows[2:]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out) + "</table>"


def write_conversion_report(result: dict, out_dir: Union[str, os.PathLike]) -> dict:
    """Write ``conversion.json``, ``conversion.md``, ``conversion_accuracy.png`` and ``conversion.html`` (the
    tables and the plot) into ``out_dir``; returns their paths. ``result`` is what ``spikeformer convert`` measured:
    ``model``, ``data``, ``steps``, ``points``, ``curves`` ({ratio: {t: top-1}}), ``ann_top1`` ({ratio: top-1}),
    ``energy`` (rows for :func:`masking_table`) and ``n`` (test samples)."""
    from .plots import figure_to_png

    out = Path(out_dir)
    curves = {float(r): {int(t): v for t, v in c.items()} for r, c in result["curves"].items()}
    ann = {float(r): v for r, v in (result.get("ann_top1") or {}).items()}
    acc_md = accuracy_table(curves, result["points"], ann)
    mask_md = masking_table(result["energy"], result["steps"]) if result.get("energy") else ""
    png = figure_to_png(plot_accuracy_over_time(curves, ann))
    title = f"ANN-to-SNN conversion: {result['model']} on {result['data']} ({result['n']} test samples)"
    md = [f"# {title}", "", "## Accuracy against simulation steps", "", acc_md]
    if mask_md:
        md += ["", f"## Masking ratio, accuracy and SOPs ({result.get('convention', 'generic')} convention)", "",
               mask_md]
    paths = {"json": out / "conversion.json", "md": out / "conversion.md", "png": out / "conversion_accuracy.png",
             "html": out / "conversion.html"}
    _write_atomic(paths["json"], json.dumps(result, indent=1))
    _write_atomic(paths["md"], "\n".join(md) + "\n")
    _write_atomic(paths["png"], png)
    img = base64.b64encode(png).decode("ascii")
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Accuracy against simulation steps</h2>",
            f'<img alt="top-1 against simulation steps" src="data:image/png;base64,{img}">', _md_to_html_table(acc_md)]
    if mask_md:
        body += [f"<h2>Masking ratio, accuracy and SOPs ({html.escape(result.get('convention', 'generic'))} "
                 "convention)</h2>", _md_to_html_table(mask_md)]
    from .report import CSS

    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    _write_atomic(paths["html"], page)
    return {k: str(v) for k, v in paths.items()}


__all__ = ["accuracy_table", "event_kind", "masking_table", "plot_accuracy_over_time", "snn_energy_report",
           "write_conversion_report"]
