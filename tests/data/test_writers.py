"""Writers of tiny event files in the exact on-disk formats, independent of the readers they test (checked here
byte by byte against the format specs)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_atis(path, t, x, y, p) -> None:
    """40-bit ATIS events: x, y, (p << 7 | t[22:16]), t[15:8], t[7:0]."""
    rows = []
    for ti, xi, yi, pi in zip(t, x, y, p):
        ti = int(ti)
        rows.append(bytes([int(xi), int(yi), (int(pi) << 7) | (ti >> 16), (ti >> 8) & 0xFF, ti & 0xFF]))
    Path(path).write_bytes(b"".join(rows))


def write_aedat3(path, packets) -> None:
    """AEDAT 3.1: ASCII header, then packets. ``packets`` = list of (event_type, ts_overflow, [(t, x, y, p), ...])."""
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n",
           b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n", b"#!END-HEADER\r\n"]
    for etype, overflow, events in packets:
        n = len(events)
        out.append(struct.pack("<hhiiiiii", etype, 1, 8, 4, overflow, n, n, n))
        for t, x, y, p in events:
            addr = (int(x) << 17) | (int(y) << 2) | (int(p) << 1) | 1  # bit 0 = valid
            out.append(struct.pack("<II", addr, int(t) & 0x7FFFFFFF))
    Path(path).write_bytes(b"".join(out))


def write_aedat2(path, t, x, y, p) -> None:
    """AEDAT 2.0 / jAER DVS128: '#' header, then big-endian uint32 (address, timestamp) pairs, address
    = y << 8 | x << 1 | p (raw sensor fields, before any dataset axis mapping)."""
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, int32 " \
             b"timestamp (8 bytes total), repeated for each event\r\n# created Mon Jan 01 00:00:00 CST 2016\r\n"
    body = b"".join(struct.pack(">II", (int(yi) << 8) | (int(xi) << 1) | int(pi), int(ti))
                    for ti, xi, yi, pi in zip(t, x, y, p))
    Path(path).write_bytes(header + body)


def random_stream(rng, n, H, W, t_max=100_000):
    t = np.sort(rng.integers(0, t_max, n))
    return t, rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, 2, n)


def test_writers_produce_the_specified_bytes(tmp_path):
    write_atis(tmp_path / "a.bin", [0x123456], [5], [7], [1])
    assert (tmp_path / "a.bin").read_bytes() == bytes([5, 7, 0x80 | 0x12, 0x34, 0x56])
    write_aedat2(tmp_path / "b.aedat", [0x01020304], [3], [100], [1])
    body = (tmp_path / "b.aedat").read_bytes().split(b"\r\n")[-1]
    assert body == bytes([0, 0, 100, 3 << 1 | 1, 1, 2, 3, 4])  # big-endian address, then timestamp
    write_aedat3(tmp_path / "c.aedat", [(1, 2, [(9, 4, 6, 1)])])
    data = (tmp_path / "c.aedat").read_bytes()
    packet = data[data.index(b"#!END-HEADER\r\n") + 14:]
    assert struct.unpack("<hhiiiiii", packet[:28]) == (1, 1, 8, 4, 2, 1, 1, 1)
    assert struct.unpack("<II", packet[28:]) == (4 << 17 | 6 << 2 | 1 << 1 | 1, 9)
