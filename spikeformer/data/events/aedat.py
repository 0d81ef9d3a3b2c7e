"""AEDAT readers: AEDAT 3.1 (DVS128 Gesture), AEDAT 2.0 / jAER (CIFAR10-DVS, DAVIS cameras), AEDAT 1.0, plus the
Gesture label files. AEDAT 4 (DV software) is read through the optional faery package (``faery_io.py``).

AEDAT 3.1 (iniVation format spec): an ASCII header of ``#`` lines ending with ``#!END-HEADER``, then packets.
Each packet has a 28-byte little-endian header (int16 eventType, int16 eventSource, int32 eventSize,
int32 eventTSOffset, int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid) followed by
``eventCapacity * eventSize`` bytes. Polarity events (type 1) are a uint32 address (bit 1 polarity, bits 2..16 y,
bits 17..31 x) and a uint32 timestamp; the full timestamp is ``timestamp | eventTSOverflow << 31``. Like
SpikingJelly's ``load_aedat_v3`` we read all ``eventCapacity`` slots and do not filter on the valid bit.

AEDAT 2.0 (jAER): ``#`` header lines, then big-endian uint32 (address, timestamp) pairs; AEDAT 1.0 is the same
with a 16-bit address (6-byte records). The address layout is that of the jAER chip class that recorded the file:

- DVS128 (CIFAR10-DVS, and every AEDAT 1.0 file): polarity in bit 0, x in bits 1..7 and y in bits 8..14.
  SpikingJelly then maps ``x' = 127 - y``, ``y' = 127 - x``, ``p' = 1 - p`` (a transpose-and-flip that shows the
  CIFAR10-DVS objects upright); we do the same by default so frames match the ones the published CIFAR10-DVS
  models were trained on, for 1.0 and 2.0 alike (one DVS128 recording reads the same in either version).
- DAVIS (DAVIS240, DAVIS346, DAVIS640, DAVIS128): the layout of jAER's ``eu.seebetter.ini.chips.DavisChip``
  (YSHIFT 22, XSHIFT 12, POLSHIFT 11, EVENT_TYPE_SHIFT 10, ADDRESS_TYPE_MASK 0x80000000), as iniVation's
  AedatTools ``ImportAedatDataVersion1or2`` decodes it: a record is a DVS event when bit 31 (APS / IMU sample) and
  bit 10 (external-input or other special event) are both clear; then y = bits 22..30, x = bits 12..21,
  polarity = bit 11 (1 = ON). APS reads (bit 31 set) and IMU samples (``0x80000C00`` set) are skipped. jAER counts
  rows from the bottom; rows are flipped (``y = H - 1 - y``) to the top-left origin of AEDAT 3/4 and of iniVation's
  ``aedat4to2`` converter, so a DAVIS recording reads the same from its AEDAT 2.0 and AEDAT 4 files.

The layout and the sensor come from the ``# AEChip:`` / ``# HardwareInterface:`` header lines jAER writes (e.g.
``eu.seebetter.ini.chips.davis.DAVIS240C`` -> 240x180, ``Davis346B`` -> 346x260). A file without such a line is
DVS128 unless most of its addresses use bits above 15 (no DVS128 address does, nearly every DAVIS one does); a
DAVIS file that does not name its chip gets the smallest DAVIS sensor holding all of its events.
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


DVS128, DAVIS = "dvs128", "davis"
# Sensor (H, W) of the jAER chip classes (and libcaer / AEDAT 3 source names), matched in lower case.
_DAVIS_SENSORS = (("davis346", (260, 346)), ("davis240", (180, 240)), ("dvs240", (180, 240)),
                  ("sbret10", (180, 240)), ("davis640", (480, 640)), ("davis128", (128, 128)))
_DAVIS_SIZES = ((180, 240), (260, 346), (480, 640))  # for a DAVIS file that does not name its chip
_DVS128_NAMES = ("dvs128", "tmpdiff128")
_CHIP_LINES = ("aechip", "hardwareinterface", "source")  # AEDAT 2.0 chip class / interface, AEDAT 3 '#Source N:'


def chip_sensor(header: str) -> tuple[str, tuple[int, int] | None] | None:
    """(layout, (H, W) or None) named by the chip lines of an AEDAT header, or None when no line names a chip."""
    lines = [ln.lower() for ln in header.splitlines()]
    lines = [ln for ln in lines if any(k in ln.replace(" ", "").replace("-", "") for k in _CHIP_LINES)]
    lines.sort(key=lambda ln: "aechip" not in ln)  # the chip class is more specific than the USB interface
    for ln in lines:
        if any(n in ln for n in _DVS128_NAMES):
            return DVS128, (128, 128)
        for name, size in _DAVIS_SENSORS:
            if name in ln:
                return DAVIS, size
    if any("davis" in ln for ln in lines):
        return DAVIS, None
    return None


def _header_text(data: bytes, off: int) -> str:
    return data[:off].decode("ascii", "replace")


def _dvs128_events(addr: np.ndarray, t: np.ndarray, cifar10dvs_axes: bool) -> np.ndarray:
    x = (addr & 0xFE) >> 1
    y = (addr & 0x7F00) >> 8
    p = addr & 1
    if cifar10dvs_axes:
        return make_events(t, 127 - y, 127 - x, 1 - p)
    return make_events(t, x, y, p)


def _davis_events(addr: np.ndarray, t: np.ndarray, size, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    dvs = (addr & 0x80000400) == 0
    addr, t = addr[dvs], t[dvs]
    x = (addr >> 12) & 0x3FF
    y = (addr >> 22) & 0x1FF
    if size is None:
        fits = [s for s in _DAVIS_SIZES if not addr.size or (x.max() < s[1] and y.max() < s[0])]
        if not fits:
            raise SpikeformerError(
                f"{path}: DVS events reach x={x.max()}, y={y.max()}, beyond every DAVIS sensor, and the header names "
                "no chip ('# AEChip:' line); the file is corrupt or not a DAVIS recording"
            )
        size = fits[0]
    H, W = size
    if addr.size and (x.max() >= W or y.max() >= H):
        raise SpikeformerError(
            f"{path}: DVS events reach x={x.max()}, y={y.max()}, outside the {W}x{H} sensor the header names; "
            "the header names the wrong chip or the file is corrupt"
        )
    return make_events(t, x, H - 1 - y, (addr >> 11) & 1), size


def _jaer_layout(data: bytes, off: int, addr: np.ndarray) -> tuple[str, tuple[int, int] | None]:
    named = chip_sensor(_header_text(data, off))
    if named is not None:
        return named
    sample = addr[:65536]
    if sample.size and np.count_nonzero(sample >> 16) * 2 > sample.size:
        return DAVIS, None
    return DVS128, (128, 128)


def _jaer_records(data: bytes, off: int, record: int, path: Path, version: str) -> tuple[np.ndarray, np.ndarray]:
    body = len(data) - off
    if body % record:
        raise SpikeformerError(
            f"{path}: truncated or corrupt AEDAT {version} file: {body} bytes of events is not a whole number of "
            f"{record}-byte (address, timestamp) pairs; re-extract or re-export the file"
        )
    rec = np.frombuffer(data, dtype=np.dtype([("a", f">u{record - 4}"), ("t", ">u4")]), offset=off)
    return rec["a"].astype(np.int64), rec["t"].astype(np.int64)


def _decode_jaer(path, record: int, cifar10dvs_axes: bool) -> tuple[np.ndarray, tuple[int, int]]:
    path = Path(path)
    data = _read_bytes(path)
    version = "1.0" if record == 6 else "2.0"
    if not data.startswith(b"#"):
        raise SpikeformerError(f"{path}: not an AEDAT {version} file: it does not start with a '#' header line")
    off = _aedat2_body_offset(data)
    addr, t = _jaer_records(data, off, record, path, version)
    layout, size = (DVS128, (128, 128)) if record == 6 else _jaer_layout(data, off, addr)
    if layout == DAVIS:
        return _davis_events(addr, t, size, path)
    return _dvs128_events(addr, t, cifar10dvs_axes), size


def read_aedat2(path, cifar10dvs_axes: bool = True) -> np.ndarray:
    """Events of an AEDAT 2.0 (jAER) file: CIFAR10-DVS's ``cifar10_<class>_<i>.aedat`` or a DAVIS recording.

    DVS128 files: ``cifar10dvs_axes=True`` applies SpikingJelly's CIFAR10-DVS mapping (see the module docstring);
    ``False`` returns the raw address fields (x = bits 1..7, y = bits 8..14, p = bit 0). DAVIS files: the DVS
    events only, rows counted from the top (the option does not apply).
    """
    return _decode_jaer(path, 8, cifar10dvs_axes)[0]


def read_aedat1(path, cifar10dvs_axes: bool = True) -> np.ndarray:
    """Events of a jAER AEDAT 1.0 file (DVS128: 16-bit address, 32-bit timestamp, big-endian), decoded as the
    DVS128 AEDAT 2.0 files are."""
    return _decode_jaer(path, 6, cifar10dvs_axes)[0]


def jaer_sensor_size(path, record: int = 8) -> tuple[int, int]:
    """(H, W) of the sensor an AEDAT 1.0 (``record=6``) or 2.0 file was recorded with (see the module docstring)."""
    return _decode_jaer(path, record, True)[1]


def headerless_version(path) -> str:
    """'1.0' or '2.0' for a jAER file whose header has no ``#!AER-DAT`` line (the spec then says 1.0, but many
    2.0 writers omit the line): the record size that divides the body, else the one whose timestamps increase."""
    path = Path(path)
    data = _read_bytes(path)
    off = _aedat2_body_offset(data)
    body = len(data) - off
    fits = {r: body % r == 0 for r in (6, 8)}
    if fits[6] != fits[8]:
        return "1.0" if fits[6] else "2.0"
    if not fits[6]:
        raise SpikeformerError(
            f"{path}: truncated or corrupt AEDAT file: its header has no '#!AER-DAT' version line and {body} bytes "
            "of events is a whole number of neither 6-byte (AEDAT 1.0) nor 8-byte (AEDAT 2.0) records"
        )

    def rising(record: int) -> float:
        t = _jaer_records(data[:off + record * 4096], off, record, path, "")[1]
        return float(np.mean(np.diff(t) >= 0)) if t.size > 1 else 1.0

    return "1.0" if rising(6) > rising(8) else "2.0"


def aedat3_sensor_size(path) -> tuple[int, int] | None:
    """(H, W) named by the ``#Source`` line of an AEDAT 3.x header, or None when it names no known sensor."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"#!END-HEADER")
    named = chip_sensor(_header_text(head, end if end >= 0 else len(head)))
    return named[1] if named is not None else None


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
