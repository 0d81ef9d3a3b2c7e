"""Event arrays saved with numpy: ``.npz`` with arrays ``t``, ``x``, ``y``, ``p`` (SpikingJelly's ``events_np``
layout, so an existing SpikingJelly preparation can be reused) or ``.npy`` holding a structured array with those
fields. ``write_events`` saves our event type in the same ``.npz`` layout.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ...errors import SpikeformerError
from .types import as_events


def read_npz_events(path) -> np.ndarray:
    path = Path(path)
    try:
        obj = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise SpikeformerError(f"{path}: truncated or corrupt numpy event file ({e})") from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            missing = {"t", "x", "y", "p"} - set(obj.files)
            if missing:
                raise SpikeformerError(
                    f"{path}: not an event file: it lacks array(s) {sorted(missing)} (has {obj.files}); expected "
                    "arrays t, x, y, p"
                )
            try:
                fields = {k: obj[k] for k in ("t", "x", "y", "p")}
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                raise SpikeformerError(f"{path}: truncated or corrupt .npz event file ({e})") from None
        sizes = {k: v.size for k, v in fields.items()}
        if len(set(sizes.values())) != 1:
            raise SpikeformerError(f"{path}: corrupt event file: arrays t, x, y, p differ in length {sizes}")
        return as_events(fields)
    if obj.dtype.names is None:
        raise SpikeformerError(
            f"{path}: not an event file: a plain {obj.dtype} array of shape {obj.shape}; expected a structured array "
            "with fields t, x, y, p"
        )
    try:
        return as_events(obj)
    except SpikeformerError as e:
        raise SpikeformerError(f"{path}: {e}") from None


def write_events(path, events) -> None:
    """Save events as ``.npz`` (t, x, y, p) atomically: a crash never leaves a half-written file under ``path``."""
    ev = as_events(events)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, t=ev["t"], x=ev["x"], y=ev["y"], p=ev["p"])
    os.replace(tmp, path)
