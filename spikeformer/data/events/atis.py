"""ATIS 40-bit binary events (``.bin``): N-MNIST and N-Caltech101 (Orchard et al., Front. Neurosci. 2015), and
SLAYER's ``.bs2`` files (slayerPytorch ``spikeFileIO.read2Dspikes`` / ``encode2Dspikes``: the same 40-bit records).

Each event is 5 bytes: byte 0 = x, byte 1 = y, byte 2 bit 7 = polarity, then a 23-bit big-endian timestamp in
microseconds (byte 2 bits 6..0, bytes 3, 4). Decoded exactly as SpikingJelly's ``load_ATIS_bin`` (no axis flips).
Events with ``y == 240`` are timestamp-overflow markers, not pixels: like the dataset authors' reader (and tonic),
they are dropped and add 2**13 to every later timestamp. SpikingJelly ignores them; a file without markers (the
usual case) decodes identically either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import SpikeformerError
from .types import EVENT_DTYPE, make_events

OVERFLOW_Y = 240
OVERFLOW_INCREMENT = 2**13


def read_atis_bin(path) -> np.ndarray:
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 5:
        raise SpikeformerError(
            f"{path}: truncated or corrupt ATIS .bin file: {raw.size} bytes is not a whole number of 5-byte "
            "(40-bit) events; re-extract it from the dataset archive"
        )
    if raw.size == 0:
        return np.empty(0, dtype=EVENT_DTYPE)
    b = raw.reshape(-1, 5).astype(np.int64)
    x, y = b[:, 0], b[:, 1]
    p = b[:, 2] >> 7
    t = ((b[:, 2] & 127) << 16) | (b[:, 3] << 8) | b[:, 4]
    overflow = y == OVERFLOW_Y
    if overflow.any():
        t = t + np.cumsum(overflow) * OVERFLOW_INCREMENT
        keep = ~overflow
        t, x, y, p = t[keep], x[keep], y[keep], p[keep]
    return make_events(t, x, y, p)

