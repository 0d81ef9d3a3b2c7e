"""Plots (matplotlib, Agg backend): training curves, firing rates, spike rasters, attention and spike activation maps.

Every function returns a ``matplotlib.figure.Figure`` and, given ``out``, also saves it (PNG by the file name's
suffix). :func:`figure_to_png` gives the PNG bytes (the HTML report embeds them).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence, Union

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..errors import SpikeformerError  # noqa: E402


def _finish(fig, out):
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    return fig


def figure_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def read_metrics(path: Union[str, os.PathLike]) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (one JSON object per line); a directory means its metrics.jsonl."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise SpikeformerError(f"no metrics file at {p}; pass a run directory written by 'spikeformer train'")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SpikeformerError(f"{p}:{i} is not JSON ({e}); the file may be truncated") from None
    return rows


def plot_training_curves(metrics: Union[str, os.PathLike, Sequence[dict]], out=None):
    """Loss, top-1/top-5 and learning rate against epoch, from ``metrics.jsonl`` rows
    (keys ``epoch``, ``train_loss``, ``train_top1``, ``test_loss``, ``test_top1``, ``test_top5``, ``lr``)."""
    rows = read_metrics(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    if not rows:
        raise SpikeformerError("no metrics to plot (metrics.jsonl is empty)")
    ep = [r.get("epoch", i + 1) for i, r in enumerate(rows)]

    def col(k):
        return [r.get(k, np.nan) for r in rows]

    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    ax[0].plot(ep, col("train_loss"), "o-", label="train")
    ax[0].plot(ep, col("test_loss"), "s-", label="test")
    ax[0].set(title="loss", xlabel="epoch")
    ax[1].plot(ep, col("train_top1"), "o-", label="train top-1")
    ax[1].plot(ep, col("test_top1"), "s-", label="test top-1")
    ax[1].plot(ep, col("test_top5"), "^--", label="test top-5")
    ax[1].set(title="accuracy (%)", xlabel="epoch")
    ax[2].plot(ep, col("lr"), "o-")
    ax[2].set(title="learning rate", xlabel="epoch")
    for a in ax[:2]:
        a.legend(fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    return _finish(fig, out)


def plot_firing_rates(report, out=None, max_layers: int = 60):
    """Mean firing rate per spiking layer (bars) and per layer and time step (heat map), from an EnergyReport."""
    neurons = report.neurons[:max_layers]
    if not neurons:
        raise SpikeformerError("the report has no spiking layers to plot")
    names = [n.name for n in neurons]
    T = max(n.T for n in neurons)
    grid = np.full((len(neurons), T), np.nan)
    for i, n in enumerate(neurons):
        grid[i, : len(n.rates)] = n.rates
    h = max(3.0, 0.22 * len(names) + 1.2)
    fig, ax = plt.subplots(1, 2, figsize=(12, h), gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(names))
    ax[0].barh(y, [n.rate for n in neurons], color="tab:blue")
    ax[0].set_yticks(y, names, fontsize=7)
    ax[0].invert_yaxis()
    ax[0].set(xlabel="firing rate (spikes / neuron / step)", title="firing rate per layer")
    im = ax[1].imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax[1].set_yticks(y, [""] * len(y))
    ax[1].set_xticks(range(T), [str(t) for t in range(T)])
    ax[1].set(xlabel="time step", title="firing rate per time step")
    fig.colorbar(im, ax=ax[1], fraction=0.05)
    return _finish(fig, out)


def plot_spike_raster(spikes: torch.Tensor, out=None, sample: int = 0, max_neurons: int = 256, title: str = ""):
    """Raster of one layer: which neurons (rows) fire at which time step (columns).

    ``spikes``: ``[T, B, ...]`` (as from :func:`spikeformer.analysis.record_spikes`) or ``[T, ...]`` for one sample.
    The first ``max_neurons`` neurons of the flattened layer are shown.
    """
    s = torch.as_tensor(spikes).detach().float().cpu()
    if s.dim() >= 3:
        s = s[:, sample]
    s = s.reshape(s.shape[0], -1)[:, :max_neurons]
    t, n = torch.nonzero(s, as_tuple=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(t.numpy(), n.numpy(), marker="|", s=60, color="black")
    ax.set(xlabel="time step", ylabel="neuron", xlim=(-0.5, s.shape[0] - 0.5), ylim=(-0.5, s.shape[1] - 0.5),
           title=title or f"spike raster ({int(s.sum())} spikes)")
    ax.set_xticks(range(s.shape[0]))
    return _finish(fig, out)


def plot_attention_maps(attn: torch.Tensor, out=None, sample: int = 0, max_heads: int = 8, title: str = ""):
    """Token-token attention per head, averaged over time.

    ``attn``: ``[T, B, H, N, N]``, ``[B, H, N, N]``, ``[H, N, N]`` or ``[N, N]`` (e.g. from
    :func:`spikeformer.analysis.attention_maps`).
    """
    a = torch.as_tensor(attn).detach().float().cpu()
    if a.dim() == 5:
        a = a.mean(0)
    if a.dim() == 4:
        a = a[sample]
    if a.dim() == 2:
        a = a[None]
    if a.dim() != 3:
        raise SpikeformerError(f"attention maps must be [.., H, N, N]; got shape {tuple(attn.shape)}")
    a = a[:max_heads]
    cols = min(4, a.shape[0])
    rows = (a.shape[0] + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for i, ax in enumerate(axs.flat):
        if i < a.shape[0]:
            im = ax.imshow(a[i].numpy(), cmap="magma")
            ax.set_title(f"head {i}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


def spike_activation_map(spikes: torch.Tensor, size: Sequence[int], sample: int = 0) -> torch.Tensor:
    """Spike count per location of a ``[T, B, C, h, w]`` layer (time and channel mean), upsampled to ``size``."""
    s = torch.as_tensor(spikes).detach().float().cpu()
    if s.dim() != 5:
        raise SpikeformerError(f"spike activation maps need a conv layer's spikes [T, B, C, h, w]; got {tuple(s.shape)}")
    m = s[:, sample].mean((0, 1))[None, None]
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def plot_spike_activation_map(image: torch.Tensor, spikes: Union[torch.Tensor, dict], out=None, sample: int = 0,
                              max_layers: int = 4):
    """The input image with each layer's spike rate overlaid (one panel per layer).

    ``image``: ``[C, H, W]`` (or ``[T, C, H, W]`` frames, summed); ``spikes``: one ``[T, B, C, h, w]`` tensor or a
    ``{name: tensor}`` dict (conv-shaped layers are used).
    """
    img = torch.as_tensor(image).detach().float().cpu()
    if img.dim() == 4:
        img = img.abs().sum(0)
    layers = spikes if isinstance(spikes, dict) else {"spikes": spikes}
    layers = {k: v for k, v in layers.items() if torch.as_tensor(v).dim() == 5}
    if not layers:
        raise SpikeformerError("no conv-shaped spike layer [T, B, C, h, w] to overlay")
    items = list(layers.items())[:max_layers]
    H, W = img.shape[-2:]
    show = img.mean(0) if img.shape[0] != 3 else img.permute(1, 2, 0)
    show = (show - show.min()) / (show.max() - show.min() + 1e-12)
    fig, axs = plt.subplots(1, len(items) + 1, figsize=(3 * (len(items) + 1), 3.2), squeeze=False)
    axs = axs[0]
    axs[0].imshow(show.numpy(), cmap=None if show.dim() == 3 else "gray")
    axs[0].set_title("input", fontsize=9)
    for ax, (name, s) in zip(axs[1:], items):
        m = spike_activation_map(s, (H, W), sample)
        ax.imshow(show.numpy(), cmap=None if show.dim() == 3 else "gray")
        ax.imshow(m.numpy(), cmap="jet", alpha=0.5)
        ax.set_title(name[-28:], fontsize=8)
    for ax in axs:
        ax.axis("off")
    return _finish(fig, out)
