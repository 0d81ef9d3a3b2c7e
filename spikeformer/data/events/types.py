"""The one event type used everywhere: a numpy structured array with fields ``t``, ``x``, ``y``, ``p``.

``t`` is the timestamp in microseconds (int64), ``x``/``y`` the pixel column/row (uint16), ``p`` the polarity
(uint8, 1 = ON / brighter, 0 = OFF). Readers return events in file order (sorted by ``t`` for real recordings).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...errors import SpikeformerError

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])


def make_events(t: Any, x: Any, y: Any, p: Any) -> np.ndarray:
    """Pack four equal-length arrays into one structured event array (``p`` is made 0/1: nonzero -> 1)."""
    t, x, y, p = (np.asarray(a).ravel() for a in (t, x, y, p))
    n = t.size
    if not (x.size == y.size == p.size == n):
        raise SpikeformerError(f"event fields differ in length: t={n}, x={x.size}, y={y.size}, p={p.size}")
    for name, a in (("x", x), ("y", y)):
        if n and (a.min() < 0 or a.max() > np.iinfo(np.uint16).max):
            raise SpikeformerError(f"event field {name!r} has values outside 0..65535 (min {a.min()}, max {a.max()})")
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, (p != 0)
    return ev


def as_events(events: Any) -> np.ndarray:
    """Accept a structured array with fields t/x/y/p (any dtypes) or a dict of four arrays (SpikingJelly's form)."""
    if isinstance(events, np.ndarray) and events.dtype == EVENT_DTYPE:
        return events
    if isinstance(events, np.ndarray) and events.dtype.names is not None:
        missing = {"t", "x", "y", "p"} - set(events.dtype.names)
        if missing:
            raise SpikeformerError(f"event array lacks field(s) {sorted(missing)}; it has {list(events.dtype.names)}")
        return make_events(events["t"], events["x"], events["y"], events["p"])
    if isinstance(events, Mapping):
        missing = {"t", "x", "y", "p"} - set(events)
        if missing:
            raise SpikeformerError(f"event dict lacks key(s) {sorted(missing)}; it has {sorted(events)}")
        return make_events(events["t"], events["x"], events["y"], events["p"])
    raise SpikeformerError(
        f"expected events as a structured array with fields t, x, y, p (or a dict of them), got {type(events).__name__}"
    )
