"""Events -> frames: ``events_to_frames(events, T, split_by, size)`` -> float32 ``[T, 2, H, W]`` event counts.

Matches SpikingJelly's ``integrate_events_by_fixed_frames_number`` (used by every direct-training spiking
transformer repo for DVS data, reference 1.3): the N events are cut into T slices and each slice is integrated
into per-pixel counts, channel 0 = OFF (p == 0), channel 1 = ON (p != 0); values are counts, not binarised.

- ``split_by="number"``: slice i holds events ``[i*(N//T), (i+1)*(N//T))``; the last slice also takes the remainder.
- ``split_by="time"``: with ``dt = (t[-1] - t[0]) // T`` (integer floor), slice i holds the events with
  ``t0 + i*dt <= t < t0 + (i+1)*dt``; the last slice also takes everything after. Events must be in time order
  (SpikingJelly assumes it); unsorted input is sorted stably first. Where SpikingJelly fails on an empty time
  slice, the frame here is simply empty.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .events.types import as_events
from ..errors import SpikeformerError

SPLITS = ("number", "time")


def slice_bounds(t: np.ndarray, T: int, split_by: str) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive) event index of each of the T slices."""
    n = t.size
    if split_by == "number":
        di = n // T
        start = np.arange(T, dtype=np.int64) * di
        end = start + di
    elif split_by == "time":
        dt = (t[-1] - t[0]) // T
        edges = t[0] + dt * np.arange(T + 1, dtype=np.int64)
        bounds = np.searchsorted(t, edges, side="left")
        start, end = bounds[:-1].astype(np.int64), bounds[1:].astype(np.int64)
    else:
        raise SpikeformerError(f"split_by must be one of {SPLITS}, not {split_by!r}")
    end[-1] = n
    return start, end


def events_to_frames(events, T: int, split_by: str = "number", size: Optional[Sequence[int]] = None) -> np.ndarray:
    """Integrate an event stream into ``T`` two-channel count frames of ``size = (H, W)``.

    ``events``: structured array (``t``, ``x``, ``y``, ``p``) or a dict of those arrays. ``size`` defaults to the
    smallest frame holding every event (pass the sensor size for datasets). Returns float32 ``[T, 2, H, W]``.
    """
    ev = as_events(events)
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise SpikeformerError(f"T must be a positive integer number of frames, not {T!r}")
    if split_by not in SPLITS:
        raise SpikeformerError(f"split_by must be one of {SPLITS}, not {split_by!r}")
    if ev.size == 0:
        raise SpikeformerError("no events to integrate: the event stream is empty")
    x = ev["x"].astype(np.int64)
    y = ev["y"].astype(np.int64)
    if size is None:
        H, W = int(y.max()) + 1, int(x.max()) + 1
    else:
        H, W = (int(s) for s in size)
        if x.max() >= W or y.max() >= H:
            raise SpikeformerError(
                f"events fall outside the {H}x{W} sensor (max x {x.max()}, max y {y.max()}); wrong size or wrong file"
            )
    t = ev["t"]
    order = None
    if split_by == "time" and ev.size > 1 and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, x, y = t[order], x[order], y[order]
    start, end = slice_bounds(t, int(T), split_by)
    p = ev["p"] if order is None else ev["p"][order]
    frame_of_event = np.repeat(np.arange(T, dtype=np.int64), end - start)  # slices are contiguous and cover 0..N
    cell = ((frame_of_event * 2 + (p != 0)) * H + y) * W + x
    counts = np.bincount(cell, minlength=T * 2 * H * W)
    return counts.reshape(T, 2, H, W).astype(np.float32)
