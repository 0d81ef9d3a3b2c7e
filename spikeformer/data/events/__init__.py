"""Event-camera files: one structured event type (t, x, y, p) and numpy-vectorised readers per format."""

from .aedat import read_aedat1, read_aedat2, read_aedat3, read_gesture_labels
from .atis import read_atis_bin
from .detect import EXTENSIONS, detect_format, read_events, sensor_size
from .npz import read_npz_events, write_events
from .types import EVENT_DTYPE, as_events, make_events

__all__ = [
    "EVENT_DTYPE", "EXTENSIONS", "as_events", "detect_format", "make_events", "read_aedat1", "read_aedat2",
    "read_aedat3", "read_atis_bin", "read_events", "read_gesture_labels", "read_npz_events", "sensor_size",
    "write_events",
]
