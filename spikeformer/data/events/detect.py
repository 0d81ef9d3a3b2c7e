"""``read_events(path)``: pick the reader from the file's extension and first bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import SpikeformerError
from .aedat import aedat_version, read_aedat2, read_aedat3
from .atis import read_atis_bin
from .npz import read_npz_events

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
FORMATS = "ATIS .bin (N-MNIST, N-Caltech101), AEDAT 3.1 (DVS128 Gesture), AEDAT 2.0 (CIFAR10-DVS), .npz/.npy events"


def detect_format(path) -> str:
    """'atis' | 'aedat3' | 'aedat2' | 'npz'; raises SpikeformerError naming the file for anything else."""
    path = Path(path)
    if not path.exists():
        raise SpikeformerError(f"{path}: event file not found")
    if path.is_dir():
        raise SpikeformerError(f"{path}: is a directory, not an event file")
    with open(path, "rb") as f:
        head = f.read(64)
    ext = path.suffix.lower()
    if ext == ".aedat4" or head.startswith(b"#!AER-DAT4"):
        raise SpikeformerError(
            f"{path}: AEDAT 4 is not supported (tonic's re-encoded CIFAR10-DVS uses it); use the original "
            "recordings: CIFAR10-DVS .aedat from figshare, DVS128 Gesture .aedat from IBM"
        )
    if head.startswith(_NPY_MAGIC) or head.startswith(_ZIP_MAGIC):
        return "npz"
    version = aedat_version(head)
    if version is not None:
        if version.startswith("3"):
            return "aedat3"
        if version.startswith(("1", "2")):
            return "aedat2"
        raise SpikeformerError(f"{path}: unsupported AEDAT version {version!r}; supported: {FORMATS}")
    if ext in (".npz", ".npy"):
        raise SpikeformerError(f"{path}: not a numpy file (no .npy/.npz magic bytes); the file is corrupt")
    if ext == ".aedat":
        if head.startswith(b"#"):
            return "aedat2"  # jAER files older than the '#!AER-DAT' line are still '#'-headed 2.0 streams
        raise SpikeformerError(f"{path}: not an AEDAT file: it does not start with a '#!AER-DAT' header line")
    if ext == ".bin":
        if head.startswith(b"#"):
            raise SpikeformerError(f"{path}: wrong format: a '#'-headed text/AEDAT file named .bin, not ATIS events")
        return "atis"
    raise SpikeformerError(f"{path}: unrecognised event file (extension {ext or 'none'!r}); supported: {FORMATS}")


def read_events(path) -> np.ndarray:
    """Read one event file into a structured array with fields t (us), x, y, p (see ``events.types``).

    Formats: N-MNIST / N-Caltech101 ATIS ``.bin``; AEDAT 3.1 (DVS128 Gesture, the whole recording; slice it with
    the ``_labels.csv`` windows, as ``DVS128Gesture`` does); AEDAT 2.0 (CIFAR10-DVS, with SpikingJelly's axis
    mapping); ``.npz`` / ``.npy`` event arrays. Truncated, corrupt or unrecognised files raise SpikeformerError
    naming the file and the problem.
    """
    fmt = detect_format(path)
    reader = {"atis": read_atis_bin, "aedat3": read_aedat3, "aedat2": read_aedat2, "npz": read_npz_events}[fmt]
    return reader(path)
