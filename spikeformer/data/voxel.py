"""Events -> voxel grid: the event representation the Masked Spiking Transformer's authors feed their ANN.

``events_to_voxel(events, bins, size)`` spreads every event over the two nearest of ``bins`` time bins with
bilinear weights in time (Zhu et al., "Unsupervised event-based learning of optical flow, depth, and egomotion",
CVPR 2019, Eq. 1): with ``t* = (bins - 1) (t - t_first) / (t_last - t_first)``, an event adds
``max(0, 1 - |b - t*|)`` to bin ``b`` at its pixel. Polarities are kept apart instead of signed, so the grid is
``[bins, 2, H, W]`` flattened to ``2 * bins`` channels (channel ``2 b + p``: OFF then ON of bin ``b``, the layout of
``events_to_frames`` flattened) and every entry is non-negative; the channels of one pixel sum to its event count.

:class:`VoxelGrid` also resizes the grid to the model's input (area averaging when shrinking, bilinear otherwise,
as :class:`~spikeformer.data.transforms.FrameResize`) and optionally normalises it. :class:`VoxelDataset` turns any
event dataset that exposes ``events(i)``, ``targets`` and ``sensor_size`` (every event dataset of
:mod:`spikeformer.data`) into ``(voxel grid [2*bins, H, W], label)`` samples: static images for an ANN, fed to the
converted SNN at every simulation step.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import SpikeformerError
from .events.types import as_events

NORMALIZE = (None, "max", "std")


def events_to_voxel(events, bins: int, size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Voxel grid float32 ``[2 * bins, H, W]`` of an event stream on a sensor of ``size = (H, W)`` (default: the
    smallest frame holding every event)."""
    ev = as_events(events)
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise SpikeformerError(f"bins must be a positive integer number of time bins, not {bins!r}")
    if ev.size == 0:
        raise SpikeformerError("no events to put in a voxel grid: the event stream is empty")
    x, y = ev["x"].astype(np.int64), ev["y"].astype(np.int64)
    if size is None:
        H, W = int(y.max()) + 1, int(x.max()) + 1
    else:
        H, W = (int(s) for s in size)
        if x.max() >= W or y.max() >= H:
            raise SpikeformerError(
                f"events fall outside the {H}x{W} sensor (max x {x.max()}, max y {y.max()}); wrong size or wrong file")
    t = ev["t"].astype(np.float64)
    t0, t1 = t.min(), t.max()
    tn = (bins - 1) * (t - t0) / (t1 - t0) if t1 > t0 else np.zeros_like(t)
    lo = np.floor(tn).astype(np.int64)
    frac = tn - lo
    pix = ((ev["p"] != 0).astype(np.int64) * H + y) * W + x  # (polarity, y, x) inside one bin
    n = bins * 2 * H * W
    grid = np.bincount(lo * (2 * H * W) + pix, weights=1.0 - frac, minlength=n)
    up = frac > 0  # lo + 1 <= bins - 1 wherever frac > 0
    grid += np.bincount((lo[up] + 1) * (2 * H * W) + pix[up], weights=frac[up], minlength=n)
    return grid.reshape(2 * bins, H, W).astype(np.float32)


class VoxelGrid:
    """Events -> ``[2 * bins, H, W]`` tensor, resized to ``size`` and normalised.

    ``normalize``: ``None`` (weighted counts), ``"max"`` (divide by the largest entry) or ``"std"`` (the nonzero
    entries shifted and scaled to mean 0, std 1, as event-to-video networks normalise voxel grids)."""

    def __init__(self, bins: int = 5, sensor_size: Optional[Sequence[int]] = None,
                 size: Optional[Sequence[int] | int] = None, normalize: Optional[str] = None):
        if normalize not in NORMALIZE:
            raise SpikeformerError(f"normalize must be one of {NORMALIZE}, not {normalize!r}")
        self.bins, self.normalize = int(bins), normalize
        self.sensor_size = None if sensor_size is None else tuple(int(s) for s in sensor_size)
        self.size = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))

    def __call__(self, events) -> torch.Tensor:
        v = torch.from_numpy(events_to_voxel(events, self.bins, self.sensor_size))
        if self.size is not None and tuple(v.shape[-2:]) != self.size:
            shrink = self.size[0] <= v.shape[-2] and self.size[1] <= v.shape[-1]
            v = F.interpolate(v[None], size=self.size, mode="area" if shrink else "bilinear",
                              **({} if shrink else {"align_corners": False}))[0]
        if self.normalize == "max":
            v = v / v.max().clamp(min=1e-12)
        elif self.normalize == "std":
            nz = v != 0
            if nz.sum() > 1:
                vals = v[nz]
                v = torch.where(nz, (v - vals.mean()) / vals.std().clamp(min=1e-12), v)
        return v

    def __repr__(self) -> str:
        return f"VoxelGrid(bins={self.bins}, sensor_size={self.sensor_size}, size={self.size}, normalize={self.normalize})"


class VoxelDataset(Dataset):
    """``(voxel grid [2*bins, H, W], label)`` for every sample of an event dataset ``base`` (anything with
    ``events(i)``, ``targets`` and ``sensor_size``); ``transform`` runs on the grid (augmentations)."""

    def __init__(self, base, bins: int = 5, size: Optional[Sequence[int] | int] = None,
                 normalize: Optional[str] = None, transform: Optional[Callable] = None):
        missing = [a for a in ("events", "targets", "sensor_size") if not hasattr(base, a)]
        if missing:
            raise SpikeformerError(f"{type(base).__name__} is not an event dataset (it has no {', '.join(missing)}); "
                                   "voxel grids are built from the event streams of spikeformer's event datasets")
        self.base, self.transform = base, transform
        self.grid = VoxelGrid(bins, base.sensor_size, size, normalize)
        self.targets = list(base.targets)

    @property
    def in_chans(self) -> int:
        return 2 * self.grid.bins

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        v = self.grid(self.base.events(i))
        if self.transform is not None:
            v = self.transform(v)
        return v, int(self.targets[i])


def voxel_option(dataset, representation: str = "frames", bins: int = 5, size=None, normalize: Optional[str] = None):
    """``dataset`` unchanged for ``representation="frames"``, its :class:`VoxelDataset` for ``"voxel"``: the one
    line an event-dataset builder calls to offer both representations."""
    if representation == "frames":
        return dataset
    if representation == "voxel":
        return VoxelDataset(dataset, bins, size, normalize)
    raise SpikeformerError(f"representation must be 'frames' or 'voxel', not {representation!r}")


__all__ = ["VoxelDataset", "VoxelGrid", "events_to_voxel", "voxel_option"]
