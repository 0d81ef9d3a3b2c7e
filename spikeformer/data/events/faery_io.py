"""AEDAT 4 (iniVation DV: DVXplorer, DAVIS346, ...) and Prophesee EVT 2.0 / 2.1 / 3.0 ``.raw`` and ``.dat`` files,
decoded by the optional ``faery`` package (``pip install 'spikeformer[events]'``; docs/FORMATS.md says why faery).

faery returns events as (t us, x, y, on) with the origin at the top-left, as both vendors record them; an AEDAT 4
file's first event track is read (DV's recorder writes one per camera). The sensor size comes from the AEDAT 4
track description, or from the Prophesee header (``% geometry WxH``, ``% format EVT3;width=W;height=H``,
``% Width`` / ``% Height``) parsed here, so a header without one is reported as unknown, not as faery's
1280x720 fallback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import SpikeformerError
from .types import EVENT_DTYPE, make_events

EXTRA = "pip install 'spikeformer[events]'"
NAMES = {"aedat4": "AEDAT 4", "evt": "Prophesee EVT .raw", "dat": "Prophesee .dat"}


def require_faery(path, fmt: str):
    """The faery module, or a SpikeformerError naming the file, its format and the extra to install."""
    try:
        import faery
    except ImportError:
        raise SpikeformerError(
            f"{path}: reading {NAMES[fmt]} files needs the optional package faery: {EXTRA}"
        ) from None
    return faery


def _decoder(path: Path, fmt: str, **kwargs):
    faery = require_faery(path, fmt)
    try:
        return faery.file_decoder.Decoder(path, file_type="aedat" if fmt == "aedat4" else fmt, **kwargs)
    except BaseException as e:
        _reraise(e, path, fmt)


def _reraise(e: BaseException, path: Path, fmt: str):
    # faery's Rust decoder reports a damaged file as RuntimeError, or as a pyo3 PanicException, which derives
    # from BaseException; an interrupt must still get through.
    if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
        raise e
    raise SpikeformerError(f"{path}: truncated or corrupt {NAMES[fmt]} file ({str(e).strip() or type(e).__name__})") \
        from None


def prophesee_header_size(path) -> Optional[tuple[int, int]]:
    """(H, W) written in the ``%`` header of a Prophesee .raw / .dat file, or None when it records none."""
    header = []
    with open(path, "rb") as f:
        for line in f:
            if not line.startswith(b"%"):
                break
            header.append(line.decode("ascii", "replace"))
            if line.strip() == b"% end":
                break
    text = "".join(header)
    m = re.search(r"^% geometry (\d+)x(\d+)", text, re.M)
    if m:
        return int(m.group(2)), int(m.group(1))
    w = re.search(r"width=(\d+)", text) or re.search(r"^% Width (\d+)", text, re.M)
    h = re.search(r"height=(\d+)", text) or re.search(r"^% Height (\d+)", text, re.M)
    return (int(h.group(1)), int(w.group(1))) if w and h else None


def aedat4_sensor_size(path) -> tuple[int, int]:
    W, H = _decoder(Path(path), "aedat4").dimensions()
    return int(H), int(W)


def read_faery(path, fmt: str) -> np.ndarray:
    """Every event of an AEDAT 4 (``fmt='aedat4'``), EVT .raw (``'evt'``) or Prophesee .dat (``'dat'``) file."""
    path = Path(path)
    kwargs = {}
    if fmt != "aedat4":
        size = prophesee_header_size(path)
        if size is not None:
            kwargs["dimensions_fallback"] = (size[1], size[0])
    decoder = _decoder(path, fmt, **kwargs)
    try:
        packets = [p for p in decoder if len(p)]
    except BaseException as e:
        _reraise(e, path, fmt)
    if not packets:
        return np.empty(0, dtype=EVENT_DTYPE)
    ev = np.concatenate(packets)
    return make_events(ev["t"].astype(np.int64), ev["x"], ev["y"], ev["on"])
