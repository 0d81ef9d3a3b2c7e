"""``events-folder``: train on your own recordings, ``DIR/<class>/<file>`` in any format ``read_events`` reads
(AEDAT 1.0/2.0/3.1, ATIS .bin/.bs2, .npz/.npy; AEDAT 4 and Prophesee .raw/.dat with ``spikeformer[events]``).

- Classes: the subfolders of ``data_root`` (sorted by name: label i is the i-th folder); files may sit in nested
  folders below their class folder. The count is read by the engine through ``count_classes`` (the registry's
  ``extra``), and every split carries ``num_classes`` and ``input_size``.
- Split: per class, a seeded shuffle puts ``round(test_fraction * n)`` files (at least one, never all) in the test
  split, drawn independently for every class so adding files to one class leaves the others' split alone; or two
  text files ``split_files=[train.txt, test.txt]`` (found in ``data_root``, else the working directory) listing
  paths relative to ``data_root`` (one per line, ``#`` comments), whose samples keep the listed order.
- Sensor: ``sensor_size=[H, W]``, else the sensor the files name (AEDAT chip line, AEDAT 4 track, Prophesee
  header), else the extent of all events (ATIS, numpy). Files naming different sensors are refused. The result is
  stored in ``<cache>/sensor_size.json`` with a fingerprint of the file list, so it is worked out once.
- Frames, cache, augmentation: those of the other event datasets (``dvs.EventFrameDataset``), cached under
  ``DIR/spikeformer_cache/events-folder/frames_T<T>_<split_by>_<H>x<W>/<class>/<file>.npz``. The default training
  augmentation rolls and cuts out but does not flip: in a user's classes left and right may matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import SpikeformerError
from .cache import CACHE_DIRNAME, run_tasks
from .dvs import EventFrameDataset, EventSample, _cache_root, _common
from .events.detect import EXTENSIONS, read_events, sensor_size as file_sensor_size
from .registry import register_dataset

NAME = "events-folder"
DEFAULT_POLICY = dict(flip=0.0, roll=5, cutout=0.5)


class EventFolderDataset(EventFrameDataset):
    """Frames of a user's recordings; ``num_classes`` and ``input_size`` (C, H, W) come from the folder."""

    def __init__(self, *args, frame_size: Sequence[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.num_classes = len(self.classes)
        self.input_size = (2, int(frame_size[0]), int(frame_size[1]))


def class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise SpikeformerError(f"{NAME}: data_root {root} is not a directory; pass --set data_root=DIR holding one "
                               "subfolder of event files per class")
    classes = sorted(p.name for p in root.iterdir()
                     if p.is_dir() and p.name != CACHE_DIRNAME and not p.name.startswith("."))
    if not classes:
        raise SpikeformerError(f"{NAME}: {root} has no class folders; put each class's recordings in its own "
                               f"subfolder ({root}/<class>/<file>.aedat ...)")
    return classes


def count_classes(root=None, **_options) -> int:
    """The class count of ``events-folder`` at ``root``, for code that builds the model before the data."""
    if not root:
        raise SpikeformerError(f"dataset {NAME!r} needs its files: pass --set data_root=DIR")
    return len(class_folders(Path(root).expanduser()))


def _class_files(root: Path, classes: Sequence[str]) -> dict[str, list[Path]]:
    files = {}
    for c in classes:
        cdir = root / c
        found = sorted((p for p in cdir.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(cdir).parts)), key=lambda p: p.relative_to(root).as_posix())
        files[c] = [p for p in found if p.suffix.lower() in EXTENSIONS]
        if not files[c]:
            other = sorted({p.suffix or p.name for p in found})
            raise SpikeformerError(f"{NAME}: class folder {cdir} holds no event files"
                                   f"{' (only ' + ', '.join(other[:6]) + ')' if other else ''}; "
                                   f"supported extensions: {', '.join(EXTENSIONS)}")
    return files


def _stratified(files: dict[str, list[Path]], root: Path, test_fraction: float, seed: int) -> dict[str, list[str]]:
    if not 0 <= float(test_fraction) < 1:
        raise SpikeformerError(f"{NAME}: test_fraction must be in [0, 1), not {test_fraction!r}")
    out = {"train": [], "test": []}
    for c in sorted(files):
        rel = [p.relative_to(root).as_posix() for p in files[c]]
        n = len(rel)
        k = min(max(round(test_fraction * n), 1 if test_fraction > 0 else 0), n - 1)
        rng = np.random.default_rng([int(seed), zlib.crc32(c.encode())])
        test = set(rng.permutation(n)[:k].tolist())
        for i, r in enumerate(rel):
            out["test" if i in test else "train"].append(r)
    return out


def _read_list(path, root: Path) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_absolute() and (root / p).is_file():
        p = root / p
    if not p.is_file():
        raise SpikeformerError(f"{NAME}: split file {path} not found (looked in {root} and the working directory)")
    entries = []
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(Path(line).as_posix())
    if len(set(entries)) != len(entries):
        dup = next(e for e in entries if entries.count(e) > 1)
        raise SpikeformerError(f"{NAME}: {p} lists {dup} more than once")
    return entries


def _listed(split_files, root: Path, classes: Sequence[str]) -> dict[str, list[str]]:
    if isinstance(split_files, (str, os.PathLike)) or len(split_files) != 2:
        raise SpikeformerError(f"{NAME}: split_files takes two text files [train.txt, test.txt], not {split_files!r}")
    out = {s: _read_list(f, root) for s, f in zip(("train", "test"), split_files)}
    both = set(out["train"]) & set(out["test"])
    if both:
        raise SpikeformerError(f"{NAME}: {len(both)} file(s) are listed for both train and test, e.g. {min(both)}")
    for split, entries in out.items():
        for e in entries:
            if e.split("/", 1)[0] not in classes or "/" not in e:
                raise SpikeformerError(f"{NAME}: {e} (in the {split} list) is not inside a class folder of {root} "
                                       f"(classes: {', '.join(classes)})")
            if not (root / e).is_file():
                raise SpikeformerError(f"{NAME}: {root / e} (in the {split} list) not found")
    return out


def _probe(path: str) -> tuple[str, int, int]:
    """('sensor', H, W) named by the file, or ('extent', H, W) of its events. Runs in a worker process."""
    size = file_sensor_size(path)
    if size is not None:
        return "sensor", int(size[0]), int(size[1])
    ev = read_events(path)
    if ev.size == 0:
        return "extent", 0, 0
    return "extent", int(ev["y"].max()) + 1, int(ev["x"].max()) + 1


def _fingerprint(files: Sequence[Path], root: Path) -> str:
    h = hashlib.sha1()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def folder_sensor_size(root: Path, files: Sequence[Path], cache_root: Path, workers=None,
                       progress: bool = True) -> tuple[int, int]:
    """The (H, W) frame of every recording under ``root`` (see the module docstring), cached in ``cache_root``."""
    record = cache_root / "sensor_size.json"
    key = _fingerprint(files, root)
    if record.is_file():
        try:
            stored = json.loads(record.read_text())
            if stored["files"] == key:
                return tuple(stored["size"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged record is simply worked out again
    probes = run_tasks(_probe, [str(p) for p in files], workers=workers, progress=progress,
                       desc=f"{NAME}: sensor size")
    named: dict[tuple[int, int], str] = {}
    extent = [0, 0]
    for p, (kind, h, w) in zip(files, probes):
        if kind == "sensor":
            named.setdefault((h, w), p.relative_to(root).as_posix())
        else:
            extent = [max(extent[0], h), max(extent[1], w)]
    if len(named) > 1:
        seen = "; ".join(f"{w}x{h} ({f})" for (h, w), f in named.items())
        raise SpikeformerError(f"{NAME}: the recordings name different sensors: {seen}; keep one camera per dataset "
                               "or set data_kwargs.sensor_size=[H,W] (events outside it are refused)")
    if named:
        size = next(iter(named))
    elif extent[0] and extent[1]:
        size = tuple(extent)
    else:
        raise SpikeformerError(f"{NAME}: no recording under {root} holds any event; check the files")
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"size": list(size), "files": key}))
    os.replace(tmp, record)
    return size


def _check_size(size) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise SpikeformerError(f"{NAME}: sensor_size takes [H, W], not {size!r}") from None
    if H < 1 or W < 1:
        raise SpikeformerError(f"{NAME}: sensor_size takes positive [H, W], not {size!r}")
    return H, W


@register_dataset(NAME, num_classes=0, input_size=(2, 0, 0), kind="events",
                  description="your own recordings: DIR/<class>/<files> in any supported event format; classes "
                              "and sensor size come from the files",
                  default_model="spikformer_dvs_digits_1_64", extra={"count_classes": count_classes})
def build_events_folder(split: str, root=None, T=None, split_by: str = "number", test_fraction: float = 0.2,
                        seed: int = 0, split_files: Optional[Sequence[str]] = None, sensor_size=None,
                        cache_dir=None, workers=None, progress: bool = True, augment=None, resize=None,
                        transform=None) -> EventFolderDataset:
    root, T, tf = _common(split, root, T, 16, augment, DEFAULT_POLICY, resize, transform)
    classes = class_folders(root)
    files = _class_files(root, classes)
    cache_root = _cache_root(root, NAME, cache_dir)
    everything = [p for c in classes for p in files[c]]
    size = (_check_size(sensor_size) if sensor_size is not None
            else folder_sensor_size(root, everything, cache_root, workers, progress))
    chosen = (_listed(split_files, root, classes) if split_files is not None
              else _stratified(files, root, test_fraction, seed))[split]
    label = {c: i for i, c in enumerate(classes)}
    samples = [EventSample(str(root / rel), label[rel.split("/", 1)[0]], rel) for rel in chosen]
    frame = tuple(resize) if isinstance(resize, (list, tuple)) else (resize, resize) if resize else size
    return EventFolderDataset(samples, size, T, split_by, cache_root, tf, workers, progress, classes, NAME,
                              frame_size=frame)
