"""Datasets: the embedded digits (static and emulated-DVS), event-camera datasets, static image datasets."""

import importlib
import pkgutil

from .events import EVENT_DTYPE, read_events
from .frames import events_to_frames
from .registry import DatasetInfo, build_dataset, get_dataset_info, list_datasets, register_dataset

# Every dataset module in this package registers itself on import.
for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "registry" and not _m.ispkg:
        importlib.import_module(f"{__name__}.{_m.name}")

from .spikecam import read_spike_camera, write_spike_camera  # noqa: E402  (registered above)
from .voxel import events_to_voxel  # noqa: E402

__all__ = [
    "DatasetInfo", "EVENT_DTYPE", "build_dataset", "events_to_frames", "get_dataset_info", "list_datasets",
    "events_to_voxel", "read_events", "read_spike_camera", "register_dataset", "write_spike_camera",
]
