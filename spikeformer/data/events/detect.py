"""``read_events(path)``: pick the reader from the file's extension and first bytes; ``sensor_size(path)``: the
sensor the file says it was recorded with."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import SpikeformerError
from .aedat import aedat3_sensor_size, aedat_version, headerless_version, jaer_sensor_size, read_aedat1, \
    read_aedat2, read_aedat3
from .atis import read_atis_bin
from .faery_io import aedat4_sensor_size, prophesee_header_size, read_faery
from .npz import read_npz_events

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
FORMATS = ("ATIS .bin / .bs2 (N-MNIST, N-Caltech101, SLAYER), AEDAT 1.0, AEDAT 2.0 (CIFAR10-DVS, DAVIS), "
           "AEDAT 3.1 (DVS128 Gesture), .npz/.npy events; with spikeformer[events]: AEDAT 4, Prophesee EVT .raw "
           "and .dat")
EXTENSIONS = (".bin", ".bs2", ".aedat", ".aedat4", ".raw", ".dat", ".npz", ".npy")
ATIS_EXTENSIONS = (".bin", ".bs2")


def detect_format(path) -> str:
    """'atis' | 'aedat1' | 'aedat2' | 'aedat3' | 'aedat4' | 'evt' | 'dat' | 'npz'; raises SpikeformerError naming
    the file for anything else."""
    path = Path(path)
    if not path.exists():
        raise SpikeformerError(f"{path}: event file not found")
    if path.is_dir():
        raise SpikeformerError(f"{path}: is a directory, not an event file")
    with open(path, "rb") as f:
        head = f.read(64)
    ext = path.suffix.lower()
    if head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGIC):
        return "npz"
    version = aedat_version(head)
    if version is not None:
        for major in ("1", "2", "3", "4"):
            if version.startswith(major):
                return f"aedat{major}"
        raise SpikeformerError(f"{path}: unsupported AEDAT version {version!r}; supported: {FORMATS}")
    if ext == ".aedat4":
        raise SpikeformerError(f"{path}: not an AEDAT 4 file: it does not start with the '#!AER-DAT4.0' line")
    if ext in (".npz", ".npy"):
        raise SpikeformerError(f"{path}: not a numpy file (no .npy/.npz magic bytes); the file is corrupt")
    if ext in (".aedat", ".dat") and head.startswith(b"#"):
        # jAER wrote '#'-headed files without a version line, as .aedat and, before 2010, as .dat
        return "aedat1" if headerless_version(path) == "1.0" else "aedat2"
    if ext == ".aedat":
        raise SpikeformerError(f"{path}: not an AEDAT file: it does not start with a '#!AER-DAT' header line")
    if ext == ".dat":
        return "dat"
    if ext == ".raw":
        return "evt"
    if ext in ATIS_EXTENSIONS:
        if head.startswith(b"#"):
            raise SpikeformerError(f"{path}: wrong format: a '#'-headed text/AEDAT file named {ext}, not ATIS events")
        return "atis"
    raise SpikeformerError(f"{path}: unrecognised event file (extension {ext or 'none'!r}); supported: {FORMATS}")


def read_events(path) -> np.ndarray:
    """Read one event file into a structured array with fields t (us), x, y, p (see ``events.types``).

    Formats: N-MNIST / N-Caltech101 ATIS ``.bin`` (SLAYER's ``.bs2`` too); AEDAT 1.0 and 2.0 (CIFAR10-DVS with
    SpikingJelly's axis mapping, DAVIS recordings with their DVS events only); AEDAT 3.1 (DVS128 Gesture, the whole
    recording; slice it with the ``_labels.csv`` windows, as ``DVS128Gesture`` does); ``.npz`` / ``.npy`` event
    arrays; with the optional faery package, AEDAT 4 and Prophesee EVT 2/3 ``.raw`` and ``.dat``. Truncated,
    corrupt or unrecognised files raise SpikeformerError naming the file and the problem. A file holding no events
    gives an empty array (datasets refuse such a recording).
    """
    fmt = detect_format(path)
    if fmt in ("aedat4", "evt", "dat"):
        return read_faery(path, fmt)
    reader = {"atis": read_atis_bin, "aedat1": read_aedat1, "aedat2": read_aedat2, "aedat3": read_aedat3,
              "npz": read_npz_events}[fmt]
    return reader(path)


def sensor_size(path) -> Optional[tuple[int, int]]:
    """(H, W) of the sensor the file records (AEDAT chip line or layout, AEDAT 4 track, Prophesee header), or None
    for formats that record none (ATIS, numpy arrays, headers without it): use the events' extent then."""
    fmt = detect_format(path)
    if fmt in ("aedat1", "aedat2"):
        return jaer_sensor_size(path, 6 if fmt == "aedat1" else 8)
    if fmt == "aedat3":
        return aedat3_sensor_size(path)
    if fmt == "aedat4":
        return aedat4_sensor_size(path)
    if fmt in ("evt", "dat"):
        return prophesee_header_size(path)
    return None
