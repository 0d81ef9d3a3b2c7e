"""AEDAT readers: AEDAT 3.1 (DVS128 Gesture) and AEDAT 2.0 / jAER (CIFAR10-DVS), plus the Gesture label files.

AEDAT 3.1 (iniVation format spec): an ASCII header of ``#`` lines ending with ``#!END-HEADER``, then packets.
Each packet has a 28-byte little-endian header (int16 eventType, int16 eventSource, int32 eventSize,
int32 eventTSOffset, int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid) followed by
``eventCapacity * eventSize`` bytes. Polarity events (type 1) are a uint32 address (bit 1 polarity, bits 2..16 y,
bits 17..31 x) and a uint32 timestamp; the full timestamp is ``timestamp | eventTSOverflow << 31``. Like
SpikingJelly's ``load_aedat_v3`` we read all ``eventCapacity`` slots and do not filter on the valid bit.

AEDAT 2.0 (jAER): ``#`` header lines, then big-endian uint32 (address, timestamp) pairs. For CIFAR10-DVS
(DVS128 sensor) the address holds polarity in bit 0, x in bits 1..7 and y in bits 8..14; SpikingJelly then maps
``x' = 127 - y``, ``y' = 127 - x``, ``p' = 1 - p`` (a transpose-and-flip that shows the objects upright); we do
the same by default so frames match the ones the published CIFAR10-DVS models were trained on.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ...errors import SpikeformerError
from .types import EVENT_DTYPE, make_events

POLARITY_EVENT = 1
_PACKET_HEADER = struct.Struct("<hhiiiiii")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SpikeformerError(f"{path}: cannot read event file ({e.strerror or e})") from None


def aedat_version(data: bytes) -> str | None:
    """'3.1', '2.0', ... from the first header line ``#!AER-DATx.y``, or None when there is none."""
    first = data[:64].split(b"\n", 1)[0].strip()
    if first.startswith(b"#!AER-DAT"):
        return first[len(b"#!AER-DAT"):].decode("ascii", "replace").strip()
    return None


def _aedat3_body_offset(data: bytes, path: Path) -> int:
    end = data.find(b"#!END-HEADER")
    if end < 0:
        raise SpikeformerError(f"{path}: corrupt AEDAT 3 file: no '#!END-HEADER' line ends the ASCII header")
    nl = data.find(b"\n", end)
    if nl < 0:
        raise SpikeformerError(f"{path}: truncated AEDAT 3 file: it ends inside the header")
    return nl + 1


def read_aedat3(path) -> np.ndarray:
    """Polarity events of an AEDAT 3.x file, in file order."""
    path = Path(path)
    data = _read_bytes(path)
    off = _aedat3_body_offset(data, path)
    addrs, stamps = [], []
    n = len(data)
    while off < n:
        if n - off < _PACKET_HEADER.size:
            raise SpikeformerError(
                f"{path}: truncated AEDAT 3 file: {n - off} stray bytes at offset {off} where a 28-byte packet header "
                "should be; re-extract the file from the dataset archive"
            )
        etype, _src, esize, _tsoff, tsover, capacity, _number, _valid = _PACKET_HEADER.unpack_from(data, off)
        off += _PACKET_HEADER.size
        if esize <= 0 or capacity < 0:
            raise SpikeformerError(
                f"{path}: corrupt AEDAT 3 packet header at offset {off - _PACKET_HEADER.size} "
                f"(eventSize={esize}, eventCapacity={capacity})"
            )
        size = esize * capacity
        if off + size > n:
            raise SpikeformerError(
                f"{path}: truncated AEDAT 3 file: a packet at offset {off - _PACKET_HEADER.size} needs {size} bytes "
                f"of events but only {n - off} remain; re-extract the file from the dataset archive"
            )
        if etype == POLARITY_EVENT and capacity:
            if esize < 8:
                raise SpikeformerError(f"{path}: corrupt AEDAT 3 polarity packet: eventSize {esize} < 8")
            rec = np.frombuffer(data, dtype=np.uint8, count=size, offset=off).reshape(capacity, esize)
            addrs.append(np.ascontiguousarray(rec[:, 0:4]).view("<u4").ravel())
            ts = np.ascontiguousarray(rec[:, 4:8]).view("<u4").ravel().astype(np.int64)
            stamps.append(ts | (np.int64(tsover) << 31))
        off += size
    if not addrs:
        return np.empty(0, dtype=EVENT_DTYPE)
    addr = np.concatenate(addrs)
    t = np.concatenate(stamps)
    return make_events(t, (addr >> 17) & 0x7FFF, (addr >> 2) & 0x7FFF, (addr >> 1) & 1)


def _aedat2_body_offset(data: bytes) -> int:
    """Skip ``#`` header lines as SpikingJelly's CIFAR10-DVS reader does (a line that is not text ends it)."""
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line_end = len(data) if nl < 0 else nl + 1
        try:
            text = data[pos:line_end].decode().strip()
        except UnicodeDecodeError:
            break
        if not text or text[0] != "#":
            break
        pos = line_end
    return pos


def read_aedat2(path, cifar10dvs_axes: bool = True) -> np.ndarray:
    """Events of an AEDAT 2.0 (jAER, DVS128) file such as CIFAR10-DVS's ``cifar10_<class>_<i>.aedat``.

    ``cifar10dvs_axes=True`` applies SpikingJelly's CIFAR10-DVS mapping (see the module docstring);
    ``False`` returns the raw address fields (x = bits 1..7, y = bits 8..14, p = bit 0).
    """
    path = Path(path)
    data = _read_bytes(path)
    if not data.startswith(b"#"):
        raise SpikeformerError(f"{path}: not an AEDAT 2.0 file: it does not start with a '#!AER-DAT2.0' header")
    off = _aedat2_body_offset(data)
    body = len(data) - off
    if body % 8:
        raise SpikeformerError(
            f"{path}: truncated or corrupt AEDAT 2.0 file: {body} bytes of events is not a whole number of 8-byte "
            "(address, timestamp) pairs; re-extract the file from the dataset archive"
        )
    words = np.frombuffer(data, dtype=">u4", offset=off).astype(np.int64)
    addr, t = words[0::2], words[1::2]
    x = (addr & 0xFE) >> 1
    y = (addr & 0x7F00) >> 8
    p = addr & 1
    if cifar10dvs_axes:
        return make_events(t, 127 - y, 127 - x, 1 - p)
    return make_events(t, x, y, p)


def read_gesture_labels(path) -> np.ndarray:
    """``userXX_<light>_labels.csv`` of DVS128 Gesture -> int64 array [K, 3] of (class 1..11, start_us, end_us)."""
    path = Path(path)
    if not path.is_file():
        raise SpikeformerError(f"{path}: label file not found (each DVS128 Gesture .aedat needs its _labels.csv)")
    try:
        rows = np.loadtxt(path, dtype=np.int64, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as e:
        raise SpikeformerError(f"{path}: corrupt label file ({e}); expected 'class,startTime_usec,endTime_usec' rows")
    if rows.shape[1] != 3 or rows.shape[0] == 0:
        raise SpikeformerError(f"{path}: corrupt label file: expected rows of 3 columns, got shape {rows.shape}")
    if rows[:, 0].min() < 1 or rows[:, 0].max() > 11:
        raise SpikeformerError(f"{path}: gesture classes must be 1..11, found {sorted(set(rows[:, 0].tolist()))}")
    return rows
