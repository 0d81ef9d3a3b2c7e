"""The HTML report of a reconstruction run (``RUN_DIR/report.html``, images embedded as base64 PNG).

Sections: PSNR and SSIM of the model against the classical baselines TFP and TFI on the held-out windows
(``final.json``); test windows side by side (the input spikes at the key frame, TFP, TFI, the model's output, the
ground truth, each with its PSNR / SSIM), reconstructed with the best checkpoint; training curves
(``metrics.jsonl``); the configuration.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
import yaml

from ..errors import SpikeformerError
from .image_metrics import psnr, ssim, to_uint8
from .report import CSS, write_page

MIN_SIDE = 128  # small images are enlarged (nearest neighbour) to at least this many pixels on their short side


def _png(img: torch.Tensor) -> str:
    """A uint8 ``[H, W]`` image as an ``<img>`` tag."""
    from PIL import Image

    im = Image.fromarray(img.cpu().numpy())
    scale = max(1, -(-MIN_SIDE // min(im.size)))
    if scale > 1:
        im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _checkpoint(run: Path) -> Optional[Path]:
    return next((run / n for n in ("best.safetensors", "last.safetensors") if (run / n).is_file()), None)


def sample_section(run: Path, cfg: dict, samples: int) -> str:
    """HTML table of ``samples`` test windows: spikes, TFP, TFI, model, ground truth."""
    from ..convert.checkpoint import read_metadata
    from ..data import build_dataset
    from ..data.spikecam import REDS_RATE, tfi, tfp
    from ..models import create_model

    ck = _checkpoint(run)
    if ck is None:
        return '<p class="muted">No checkpoint (best.safetensors) in the run directory: no reconstructions.</p>'
    meta = read_metadata(ck)
    kwargs = dict(meta.get("model_kwargs") or cfg.get("model_kwargs") or {})
    if meta.get("T") or cfg.get("T"):
        kwargs["T"] = int(meta.get("T") or cfg["T"])
    model = create_model(meta.get("model") or cfg["model"], checkpoint_path=str(ck), **kwargs).eval()
    ds = build_dataset(cfg["data"], "test", root=cfg.get("data_root"), T=model.T, **(cfg.get("data_kwargs") or {}))
    if len(ds) == 0:
        raise SpikeformerError(f"the test split of {cfg['data']!r} is empty")
    rate = getattr(ds, "rate", REDS_RATE)
    idx = torch.linspace(0, len(ds) - 1, min(samples, len(ds))).round().long().unique().tolist()
    spikes, gts = (torch.stack(v) for v in zip(*(ds[i] for i in idx)))
    with torch.no_grad():
        outs = {"TFP": tfp(spikes, rate), "TFI": tfi(spikes, rate), "model": model.reconstruct(spikes)[:, 0]}
    gt = (gts[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)
    heads = ["input spikes (key frame)", "TFP", "TFI", "model", "ground truth"]
    rows = ['<table id="recon-samples"><tr><th class="l">window</th>' + "".join(f"<th>{h}</th>" for h in heads)
            + "</tr>"]
    for j, i in enumerate(idx):
        key = (spikes[j, spikes.shape[1] // 2] * 255).to(torch.uint8)
        cells = [f"<td>{_png(key)}</td>"]
        for name in ("TFP", "TFI", "model"):
            im = to_uint8(outs[name][j].float())
            cells.append(f"<td>{_png(im)}<br>{psnr(im, gt[j]).item():.2f} dB / {ssim(im, gt[j]).item():.4f}</td>")
        cells.append(f"<td>{_png(gt[j])}</td>")
        name = ds.names[i] if getattr(ds, "names", None) else str(i)
        rows.append(f"<tr><td class='l'>{html.escape(name)}</td>{''.join(cells)}</tr>")
    rows.append("</table>")
    return (f"<p>{len(idx)} test window(s) of <code>{html.escape(str(cfg['data']))}</code> ({model.T} frames), "
            f"reconstructed with <code>{html.escape(ck.name)}</code>; PSNR / SSIM under each image (uint8).</p>"
            + "\n".join(rows))


def _curves(rows: list[dict]):
    import matplotlib.pyplot as plt

    from .plots import _finish

    ep = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    for a, key, title in zip(ax, ("train_loss", "test_psnr", "test_ssim"), ("train loss", "test PSNR (dB)",
                                                                            "test SSIM")):
        a.plot(ep, [r.get(key, float("nan")) for r in rows], "o-")
        a.set(title=title, xlabel="epoch")
    return _finish(fig, None)


def write_recon_report(run_dir: Union[str, os.PathLike], samples: Optional[int] = None) -> Path:
    """Write ``run_dir/report.html`` for a reconstruction run and return its path; ``samples`` test windows are
    shown (default: the run's ``recon.report_samples``, else 6)."""
    from .plots import figure_to_png, read_metrics

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise SpikeformerError(f"{run} is not a run directory (no config.yaml); pass the directory a run wrote")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    if not cfg.get("model"):
        raise SpikeformerError(f"{cfg_path} names no model; add 'model: NAME'")
    samples = samples or int((cfg.get("recon") or {}).get("report_samples") or 6)
    final = json.loads((run / "final.json").read_text()) if (run / "final.json").is_file() else {}

    body = [f"<h1>spikeformer reconstruction: {html.escape(str(cfg['model']))} on "
            f"{html.escape(str(cfg.get('data', '?')))}</h1>", f'<p class="muted">{html.escape(run.resolve().name)}</p>',
            "<h2>Held-out PSNR and SSIM</h2>"]
    if final:
        body.append('<table id="recon-metrics"><tr><th class="l">method</th><th>PSNR (dB)</th><th>SSIM</th></tr>')
        for label, p in (("TFP (window average)", "tfp_"), ("TFI (inter-spike interval)", "tfi_"),
                         (f"{cfg['model']} (last epoch)", "")):
            if f"{p}psnr" in final:
                body.append(f"<tr><td class='l'>{html.escape(label)}</td><td>{final[p + 'psnr']:.2f}</td>"
                            f"<td>{final[p + 'ssim']:.4f}</td></tr>")
        body.append("</table>")
        if final.get("best_epoch", -1) > 0:
            body.append(f"<p>best PSNR {final['best_psnr']:.2f} dB at epoch {final['best_epoch']} "
                        f"({final.get('n', '?')} test windows).</p>")
    else:
        body.append('<p class="muted">No final.json (the run has not finished).</p>')

    body.append("<h2>Reconstructions</h2>")
    body.append(sample_section(run, cfg, samples))

    body.append("<h2>Training curves</h2>")
    rows = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    if rows:
        data = base64.b64encode(figure_to_png(_curves(rows))).decode("ascii")
        body.append(f'<img alt="training curves" src="data:image/png;base64,{data}">')
    else:
        body.append('<p class="muted">No metrics.jsonl.</p>')

    body.append("<h2>Configuration</h2>")
    body.append(f"<pre>{html.escape(cfg_path.read_text())}</pre>")
    css = CSS + "#recon-samples img{image-rendering:pixelated;margin:0 auto}"
    return write_page(run, f"spikeformer reconstruction: {cfg['model']}", body, css)
