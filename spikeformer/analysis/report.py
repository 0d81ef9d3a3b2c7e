"""A self-contained HTML report of one training run (``RUN_DIR/report.html``, images embedded as base64 PNG).

Sections: final metrics (``final.json``), training curves (``metrics.jsonl``), the configuration
(``config.yaml``), energy / SOPs per layer and firing rates measured with the best checkpoint
(``best.safetensors``, else ``last.safetensors``) on a few test samples, a spike raster and spike activation maps.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
import yaml

from ..errors import SpikeformerError

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
img{max-width:100%;display:block;margin:.5em 0}.metric{display:inline-block;margin-right:2em;font-size:1.2em}
.metric b{font-size:1.5em}.muted{color:#777}
"""


def _img(fig, alt: str) -> str:
    from .plots import figure_to_png

    data = base64.b64encode(figure_to_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _load_samples(cfg: dict, T: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test samples of the run's data, batched as the model takes them."""
    from ..data import build_dataset

    ds = build_dataset(cfg["data"], "test", root=cfg.get("data_root"), T=T, **(cfg.get("data_kwargs") or {}))
    n = min(n, len(ds))
    if n == 0:
        raise SpikeformerError(f"the test split of {cfg['data']!r} is empty")
    xs, ys = zip(*(ds[i] for i in range(n)))
    x = torch.stack([torch.as_tensor(v) for v in xs]).float()
    if x.dim() == 5:  # event frames [B, T, C, H, W] -> [T, B, C, H, W]
        x = x.transpose(0, 1).contiguous()
    return x, torch.as_tensor(ys)


def _checkpoint(run: Path) -> Optional[Path]:
    for name in ("best.safetensors", "last.safetensors"):
        if (run / name).is_file():
            return run / name
    return None


def energy_section(run: Path, cfg: dict, samples: int, convention: str) -> tuple[str, dict]:
    """HTML of the energy table and the spiking plots, plus the totals (empty when there is no checkpoint)."""
    from ..models import create_model
    from .energy import energy_report, record_spikes
    from .plots import plot_firing_rates, plot_spike_activation_map, plot_spike_raster

    ck = _checkpoint(run)
    if ck is None:
        return '<p class="muted">No checkpoint (best.safetensors) in the run directory: energy not measured.</p>', {}
    kwargs = dict(cfg.get("model_kwargs") or {})
    if cfg.get("T"):
        kwargs["T"] = cfg["T"]
    try:
        from ..convert.checkpoint import read_metadata

        nc = read_metadata(ck).get("num_classes")
        if nc:
            kwargs.setdefault("num_classes", int(nc))
    except Exception:
        pass
    model = create_model(cfg["model"], checkpoint_path=str(ck), **kwargs)
    model.eval()
    x, _ = _load_samples(cfg, getattr(model, "T", None), samples)
    rep = energy_report(model, x, convention=convention)
    t = rep.totals()
    parts = [
        f"<p>Measured with <code>{html.escape(ck.name)}</code> on {rep.samples} test sample(s) of "
        f"<code>{html.escape(str(cfg['data']))}</code>, T = {rep.T}, convention <code>{html.escape(rep.convention)}"
        f"</code> (E_MAC {rep.e_mac} pJ, E_AC {rep.e_ac} pJ), per sample.</p>",
        '<table id="energy-totals"><tr>' + "".join(f"<th>{h}</th>" for h in
                                                   ("SOPs", "MACs", "energy (mJ)", "ANN FLOPs", "ANN energy (mJ)",
                                                    "mean firing rate", "params")) + "</tr><tr>"
        + "".join(f"<td>{v}</td>" for v in (f"{t['sops']:.4g}", f"{t['macs']:.4g}", f"{t['total_mj']:.4g}",
                                             f"{t['flops']:.4g}", f"{t['ann_mj']:.4g}", f"{t['firing_rate']:.4f}",
                                             f"{t['params']:,}")) + "</tr></table>",
        "<h3>Per synaptic operation</h3>",
        '<table id="energy-layers"><tr><th class="l">layer</th><th class="l">op</th><th class="l">input</th>'
        "<th>FLOPs/step</th><th>rate</th><th>SOPs</th><th>MACs</th><th>mJ</th><th class='l'>note</th></tr>",
    ]
    for r in rep.layers:
        parts.append(
            f"<tr><td class='l'>{html.escape(r.name)}</td><td class='l'>{r.op}</td><td class='l'>"
            f"{html.escape(r.inputs)}</td><td>{r.flops:.4g}</td><td>{r.rate:.4f}</td><td>{r.sops:.4g}</td>"
            f"<td>{r.macs:.4g}</td><td>{r.energy_mj:.4g}</td><td class='l'>{html.escape(r.note)}</td></tr>"
        )
    parts.append("</table>")
    parts.append("<h2>Firing rates</h2>")
    if rep.neurons:
        parts.append(_img(plot_firing_rates(rep), "firing rates"))
        busiest = max(rep.neurons, key=lambda n: n.spikes)
        spikes = record_spikes(model, x)
        parts.append(f"<h3>Spike raster: {html.escape(busiest.name)}</h3>")
        parts.append(_img(plot_spike_raster(spikes[busiest.name], title=busiest.name), "spike raster"))
        conv_layers = {k: v for k, v in spikes.items() if v.dim() == 5}
        if conv_layers:
            img = x[:, 0] if x.dim() == 5 else x[0]
            parts.append("<h3>Spike activation maps</h3>")
            parts.append(_img(plot_spike_activation_map(img, conv_layers), "spike activation maps"))
    else:
        parts.append('<p class="muted">No spiking layers found.</p>')
    return "\n".join(parts), t


def write_report(run_dir: Union[str, os.PathLike], samples: int = 16, convention: Optional[str] = None) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    ``samples``: how many test samples the energy and firing rates are measured on; ``convention``: the energy
    convention (default: the run config's ``energy_convention`` or ``generic``).
    """
    from .plots import plot_training_curves, read_metrics

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise SpikeformerError(f"{run} is not a run directory (no config.yaml); pass the directory a run wrote")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    if not cfg.get("model"):
        raise SpikeformerError(f"{cfg_path} names no model; add 'model: NAME'")
    convention = convention or cfg.get("energy_convention") or "generic"
    final = json.loads((run / "final.json").read_text()) if (run / "final.json").is_file() else {}

    body = [f"<h1>spikeformer run: {html.escape(str(cfg['model']))} on {html.escape(str(cfg.get('data', '?')))}</h1>",
            f'<p class="muted">{html.escape(str(run.resolve().name))}</p>', "<h2>Final metrics</h2>"]
    if final:
        body.append('<div id="final-metrics">')
        for key, label in (("top1", "top-1 (%)"), ("top5", "top-5 (%)"), ("loss", "loss")):
            if key in final:
                body.append(f'<span class="metric">{label} <b id="metric-{key}">{_fmt(final[key])}</b></span>')
        body.append("</div><table>" + "".join(f"<tr><th class='l'>{html.escape(str(k))}</th><td class='l'>"
                                               f"{_fmt(v)}</td></tr>" for k, v in final.items()) + "</table>")
    else:
        body.append('<p class="muted">No final.json (the run has not finished).</p>')

    body.append("<h2>Training curves</h2>")
    rows = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    body.append(_img(plot_training_curves(rows), "training curves") if rows
                else '<p class="muted">No metrics.jsonl.</p>')

    body.append("<h2>Energy and synaptic operations</h2>")
    section, _ = energy_section(run, cfg, samples, convention)
    body.append(section)

    body.append("<h2>Configuration</h2>")
    body.append(f"<pre>{html.escape(cfg_path.read_text())}</pre>")

    return write_page(run, f"spikeformer report: {cfg['model']}", body)


def write_page(run: Path, title: str, body: list, css: str = CSS) -> Path:
    """``run/report.html`` from the HTML fragments ``body``, written atomically (temporary file, then rename)."""
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>{css}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    out = run / "report.html"
    tmp = run / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
