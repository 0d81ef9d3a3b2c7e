"""Event-camera datasets as frame sequences ``[T, 2, H, W]``: DVS128 Gesture, CIFAR10-DVS, N-MNIST, N-Caltech101.

Each builder reads the files exactly as the official downloads unpack (trees in the README's "Datasets"
section), integrates every sample with ``events_to_frames`` (SpikingJelly's convention, reference 1.3) and caches
the frames on disk under ``<root>/spikeformer_cache/<dataset>/frames_T<T>_<split_by>_<H>x<W>/`` (or
``cache_dir=``), built in parallel with a progress bar on first use. Labels follow SpikingJelly's
``DatasetFolder`` order (class folder names sorted as strings) so published checkpoints' heads line up: for
DVS128 Gesture that puts gesture folder "10" (class 11, "other") at index 2.

Splits: DVS128 Gesture and N-MNIST use their official train/test files. CIFAR10-DVS and N-Caltech101 have none;
as Spikformer / Spikingformer / SDT (``split_to_train_test_set(0.9, ..., random_split=False)``) and
SpikingResformer do, the first ceil(90 %) of each class's files in sorted-name order train and the rest test
(900/100 per CIFAR10-DVS class). The split is written to ``split_90_10.json`` next to the cache and reused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SpikeformerError
from .cache import CACHE_DIRNAME, FrameCache, run_tasks
from .events.aedat import read_gesture_labels
from .events.detect import read_events
from .frames import SPLITS, events_to_frames
from .registry import register_dataset
from .transforms import dvs_augment

CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# SpikingJelly's ImageFolder sorts the gesture folders '0'..'10' as strings.
GESTURE_FOLDERS = tuple(sorted(str(i) for i in range(11)))


@dataclass(frozen=True)
class EventSample:
    source: str  # event file
    label: int
    sample_id: str  # cache entry name (relative path, no extension)
    window: Optional[tuple[int, int]] = None  # [start, end) in us: a slice of a longer recording (DVS128 Gesture)


def sample_events(sample: EventSample, events: Optional[np.ndarray] = None) -> np.ndarray:
    """The events of one sample (reading its file unless ``events`` of that file are given); never empty."""
    ev = read_events(sample.source) if events is None else events
    if sample.window is not None:
        t0, t1 = sample.window
        ev = ev[(ev["t"] >= t0) & (ev["t"] < t1)]
        if ev.size == 0:
            raise SpikeformerError(f"{sample.source}: no events in the labelled window [{t0}, {t1}) us of sample "
                                   f"{sample.sample_id}; the recording or its _labels.csv is damaged")
    elif ev.size == 0:
        raise SpikeformerError(f"{sample.source}: the recording holds no events (an empty file, or only non-DVS "
                               "records such as APS frames and IMU samples); re-extract or re-export it, or remove it "
                               "from the dataset")
    return ev


def check_inside(ev: np.ndarray, source: str, size: Sequence[int]) -> None:
    """Refuse a recording none of whose events falls on the ``size`` (H, W) frame: it would integrate to nothing."""
    H, W = (int(s) for s in size)
    if not np.any((ev["x"] < W) & (ev["y"] < H)):
        raise SpikeformerError(
            f"{source}: none of its {ev.size} events falls inside the {W}x{H} sensor (x up to {ev['x'].max()}, y up "
            f"to {ev['y'].max()}): a recording of another sensor, or the wrong sensor size for this dataset"
        )


def integrate_sample(sample: EventSample, T: int, split_by: str, size: Sequence[int],
                     events: Optional[np.ndarray] = None) -> np.ndarray:
    ev = sample_events(sample, events)
    check_inside(ev, sample.source, size)
    try:
        return events_to_frames(ev, T, split_by, size)
    except SpikeformerError as e:
        raise SpikeformerError(f"{sample.source}: {e}") from None


def _build_group(task) -> int:
    """Integrate and cache every sample cut from one source file (read once). Runs in a worker process."""
    samples, T, split_by, size, cache_root = task
    cache = FrameCache(cache_root, T, split_by, size)
    events = read_events(samples[0].source)
    for s in samples:
        cache.save(s.sample_id, integrate_sample(s, T, split_by, size, events))
    return len(samples)


class EventFrameDataset(Dataset):
    """``(frames [T, 2, H, W] float32, label)`` for a list of event samples, through an on-disk frame cache."""

    def __init__(self, samples: Sequence[EventSample], sensor_size: Sequence[int], T: int, split_by: str = "number",
                 cache_root=None, transform: Optional[Callable] = None, workers: Optional[int] = None,
                 progress: bool = True, classes: Sequence[str] = (), name: str = "events"):
        if not isinstance(T, int) or T < 1:
            raise SpikeformerError(f"T must be a positive integer, not {T!r}")
        if split_by not in SPLITS:
            raise SpikeformerError(f"split_by must be one of {SPLITS}, not {split_by!r}")
        self.samples = list(samples)
        self.sensor_size, self.T, self.split_by = tuple(sensor_size), T, split_by
        self.transform, self.classes, self.name = transform, list(classes), name
        self.targets = [s.label for s in self.samples]
        self.cache = FrameCache(cache_root, T, split_by, sensor_size) if cache_root is not None else None
        if self.cache is not None:
            self.prepare(workers=workers, progress=progress)

    def prepare(self, workers: Optional[int] = None, progress: bool = True) -> int:
        """Build the missing cache entries in parallel; returns how many samples were integrated."""
        groups: dict[str, list[EventSample]] = {}
        for s in self.samples:
            if not self.cache.has(s.sample_id):
                groups.setdefault(s.source, []).append(s)
        tasks = [(g, self.T, self.split_by, self.sensor_size, str(self.cache.dir.parent)) for g in groups.values()]
        done = run_tasks(_build_group, tasks, workers=workers, progress=progress,
                         desc=f"{self.name}: frames T={self.T} {self.split_by}")
        return sum(done)

    def __len__(self) -> int:
        return len(self.samples)

    def events(self, i: int) -> np.ndarray:
        return sample_events(self.samples[i])

    def frames(self, i: int) -> np.ndarray:
        s = self.samples[i]
        frames = self.cache.load(s.sample_id) if self.cache is not None else None
        if frames is None:  # not cached yet, or the cached file was damaged: rebuild from the events
            frames = integrate_sample(s, self.T, self.split_by, self.sensor_size)
            if self.cache is not None:
                self.cache.save(s.sample_id, frames)
        return frames

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.frames(i))
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[i].label


# ----------------------------------------------------------------------------------------------- directory layouts

def _need_dir(path: Path, dataset: str, what: str) -> Path:
    if not path.is_dir():
        raise SpikeformerError(
            f"{dataset}: directory {path} not found ({what}); see the README's 'Datasets' section for the layout "
            f"and pass --set data_root=DIR"
        )
    return path


def _find_child(root: Path, names: Sequence[str]) -> Optional[Path]:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _cache_root(root: Path, name: str, cache_dir) -> Path:
    return Path(cache_dir) if cache_dir is not None else root / CACHE_DIRNAME / name


def _class_files(class_dir: Path, exts: Sequence[str]) -> list[Path]:
    # Sorted by name as strings, like torchvision's DatasetFolder: cifar10_airplane_0, _1, _10, _100, ...
    return sorted((p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in exts), key=lambda p: p.name)


def split_per_class(files_by_class: dict[str, list[Path]], train_ratio: float, split_file: Path,
                    dataset: str, root: Path) -> dict[str, list[str]]:
    """Per class: the first ceil(ratio * n) files (sorted order) train, the rest test; stored in ``split_file``.

    An existing split file is reused (so every run compares on the same test set) after checking that it lists
    exactly the files present.
    """
    rel = {c: [str(p.relative_to(root).as_posix()) for p in fs] for c, fs in files_by_class.items()}
    present = sorted(f for fs in rel.values() for f in fs)
    if split_file.is_file():
        try:
            split = json.loads(split_file.read_text())
            listed = sorted(split["train"] + split["test"])
        except (ValueError, KeyError, TypeError) as e:
            raise SpikeformerError(f"{split_file}: corrupt split file ({e}); delete it to regenerate the split")
        if listed != present:
            raise SpikeformerError(
                f"{split_file}: the stored split lists {len(listed)} files but {root} holds {len(present)} "
                f"({len(set(present) - set(listed))} not in the split, {len(set(listed) - set(present))} missing); "
                "restore the files or delete the split file to regenerate it"
            )
        return split
    train, test = [], []
    for c in sorted(rel):
        k = math.ceil(len(rel[c]) * train_ratio)
        train += rel[c][:k]
        test += rel[c][k:]
    split = {"dataset": dataset, "rule": f"per class, files sorted by name: first ceil({train_ratio}*n) train, rest test",
             "train": train, "test": test}
    split_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = split_file.with_name(f".{split_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(split, indent=1))
    os.replace(tmp, split_file)
    return split


def _gesture_samples(root: Path, split: str) -> list[EventSample]:
    d = root if (root / "trials_to_train.txt").is_file() else root / "DvsGesture"
    if not (d / "trials_to_train.txt").is_file():
        hint = ""
        for archive in (root / "DvsGesture.tar.gz", root / "download" / "DvsGesture.tar.gz"):
            if archive.is_file():
                hint = f" Found {archive}: extract it first (tar -xzf {archive.name} -C {root})."
        raise SpikeformerError(
            f"dvs128-gesture: {d / 'trials_to_train.txt'} not found: expected the extracted DvsGesture/ folder "
            f"(trials_to_train.txt, trials_to_test.txt, user*_*.aedat, user*_*_labels.csv) under {root}.{hint}"
        )
    trials = d / f"trials_to_{split}.txt"
    if not trials.is_file():
        raise SpikeformerError(f"dvs128-gesture: {trials} not found; re-extract DvsGesture.tar.gz")
    samples = []
    for line in trials.read_text().splitlines():
        name = line.strip()
        if not name:
            continue
        aedat = d / name
        if not aedat.is_file():
            raise SpikeformerError(f"dvs128-gesture: {aedat} (listed in {trials.name}) not found")
        stem = Path(name).stem
        count = [0] * 11
        for cls, start, end in read_gesture_labels(d / f"{stem}_labels.csv"):
            raw = int(cls) - 1
            samples.append(EventSample(str(aedat), GESTURE_FOLDERS.index(str(raw)),
                                       f"{split}/{raw}/{stem}_{count[raw]}", (int(start), int(end))))
            count[raw] += 1
    if not samples:
        raise SpikeformerError(f"dvs128-gesture: {trials} lists no recordings")
    return samples


def _folder_dataset_files(root: Path, dataset: str, exts: Sequence[str], class_names=None) -> dict[str, list[Path]]:
    classes = class_names or sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != CACHE_DIRNAME)
    files = {}
    for c in classes:
        cdir = _need_dir(root / c, dataset, f"class folder {c!r}")
        files[c] = _class_files(cdir, exts)
        if not files[c]:
            raise SpikeformerError(f"{dataset}: class folder {cdir} holds no {'/'.join(exts)} event files")
    if not files:
        raise SpikeformerError(f"{dataset}: no class folders under {root}; see the README's 'Datasets' section")
    return files


def augment_transform(split: str, augment, default_policy: dict):
    if augment is None:
        augment = split == "train"
    if augment is True:
        return dvs_augment(**default_policy)
    if augment is False or augment == "none":
        return None
    if isinstance(augment, dict):
        import inspect

        known = set(inspect.signature(dvs_augment).parameters)
        unknown = sorted(map(str, set(augment) - known))
        if unknown:
            raise SpikeformerError(f"augment: unknown option(s) {', '.join(map(repr, unknown))}; the options are "
                                   f"{', '.join(sorted(known))} (YAML needs a space after each colon: "
                                   f"augment={{roll: 2, cutout: 0}})")
        return dvs_augment(**augment)
    if callable(augment):
        return augment
    raise SpikeformerError(f"augment must be True/False, a dict of dvs_augment options or a callable, not {augment!r}")


def _compose(*fns):
    fns = [f for f in fns if f is not None]
    if not fns:
        return None

    def apply(x):
        for f in fns:
            x = f(x)
        return x

    return apply


def _resize(size):
    if size is None:
        return None
    from .transforms import FrameResize

    return FrameResize(size)


def _common(split, root, T, default_T, augment, policy, resize, transform):
    root = Path(root).expanduser()
    T = default_T if T is None else int(T)
    tf = transform if transform is not None else _compose(_resize(resize), augment_transform(split, augment, policy))
    return root, T, tf


@register_dataset("dvs128-gesture", num_classes=11, input_size=(2, 128, 128), kind="events",
                  description="DVS128 Gesture (IBM, CVPR 2017): AEDAT 3.1 recordings sliced by _labels.csv, "
                              "official trials_to_train/test split, 1176/288 samples",
                  default_model="spikformer_dvs_2_256")
def build_dvs128_gesture(split: str, root=None, T=None, split_by: str = "number", cache_dir=None, workers=None,
                         progress: bool = True, augment=None, resize=None, transform=None):
    # Left/right-hand gestures are mirror images, so the default policy does not flip.
    root, T, tf = _common(split, root, T, 16, augment,
                          dict(flip=0.0, roll=5, cutout=0.5), resize, transform)
    _need_dir(root, "dvs128-gesture", "data_root")
    return EventFrameDataset(_gesture_samples(root, split), (128, 128), T, split_by,
                             _cache_root(root, "dvs128-gesture", cache_dir), tf, workers, progress,
                             GESTURE_FOLDERS, "dvs128-gesture")


def _split_folder_dataset(name, split, root, exts, class_names, cache_root):
    files = _folder_dataset_files(root, name, exts, class_names)
    classes = sorted(files)
    chosen = set(split_per_class(files, 0.9, cache_root / "split_90_10.json", name, root)[split])
    samples = []
    for label, c in enumerate(classes):
        for p in files[c]:
            rel = p.relative_to(root).as_posix()
            if rel in chosen:
                samples.append(EventSample(str(p), label, str(Path(rel).with_suffix(""))))
    return samples, classes


@register_dataset("cifar10-dvs", num_classes=10, input_size=(2, 128, 128), kind="events",
                  description="CIFAR10-DVS (Li et al. 2017): AEDAT 2.0 recordings, per-class 90/10 split "
                              "(first 900 / last 100 by file name)",
                  default_model="spikformer_dvs_2_256")
def build_cifar10_dvs(split: str, root=None, T=None, split_by: str = "number", cache_dir=None, workers=None,
                      progress: bool = True, augment=None, resize=None, transform=None):
    root, T, tf = _common(split, root, T, 16, augment,
                          dict(flip=0.5, roll=5, cutout=0.5), resize, transform)
    _need_dir(root, "cifar10-dvs", "data_root")
    base = root if (root / CIFAR10DVS_CLASSES[0]).is_dir() else _find_child(root, ("CIFAR10DVS", "cifar10-dvs",
                                                                                    "events_np")) or root
    missing = [c for c in CIFAR10DVS_CLASSES if not (base / c).is_dir()]
    if missing:
        zips = [c for c in missing if (base / f"{c}.zip").is_file() or (root / "download" / f"{c}.zip").is_file()]
        hint = f" Found {', '.join(z + '.zip' for z in zips)}: unzip them in {base}." if zips else ""
        raise SpikeformerError(f"cifar10-dvs: class folder(s) {missing} not found under {base}; expected "
                               f"{base}/<class>/cifar10_<class>_<i>.aedat for the 10 CIFAR-10 classes.{hint}")
    cache_root = _cache_root(root, "cifar10-dvs", cache_dir)
    samples, classes = _split_folder_dataset("cifar10-dvs", split, base, (".aedat", ".npz"), CIFAR10DVS_CLASSES,
                                             cache_root)
    return EventFrameDataset(samples, (128, 128), T, split_by, cache_root, tf, workers, progress, classes,
                             "cifar10-dvs")


@register_dataset("n-mnist", num_classes=10, input_size=(2, 34, 34), kind="events",
                  description="N-MNIST (Orchard et al. 2015): ATIS .bin saccade recordings of MNIST, official "
                              "Train/Test split, 34x34",
                  default_model="spikformer_dvs_2_256")
def build_n_mnist(split: str, root=None, T=None, split_by: str = "number", cache_dir=None, workers=None,
                  progress: bool = True, augment=None, resize=None, transform=None):
    root, T, tf = _common(split, root, T, 10, augment,
                          dict(flip=0.0, roll=2, cutout=0.0), resize, transform)
    _need_dir(root, "n-mnist", "data_root")
    names = ("Train", "train") if split == "train" else ("Test", "test")
    d = _find_child(root, names)
    if d is None:
        zips = [z for z in ("Train.zip", "Test.zip") if (root / z).is_file()]
        hint = f" Found {', '.join(zips)}: unzip them in {root}." if zips else ""
        raise SpikeformerError(f"n-mnist: {root / names[0]} not found; expected {root}/Train/<digit>/*.bin and "
                               f"{root}/Test/<digit>/*.bin (from Train.zip and Test.zip).{hint}")
    files = _folder_dataset_files(d, "n-mnist", (".bin", ".npz"))
    classes = sorted(files)
    samples = [EventSample(str(p), label, f"{split}/{c}/{p.stem}") for label, c in enumerate(classes)
               for p in files[c]]
    return EventFrameDataset(samples, (34, 34), T, split_by, _cache_root(root, "n-mnist", cache_dir), tf, workers,
                             progress, classes, "n-mnist")


@register_dataset("n-caltech101", num_classes=101, input_size=(2, 180, 240), kind="events",
                  description="N-Caltech101 (Orchard et al. 2015): ATIS .bin recordings, per-class 90/10 split by "
                              "file name, 180x240",
                  default_model="spikformer_dvs_2_256")
def build_n_caltech101(split: str, root=None, T=None, split_by: str = "number", cache_dir=None, workers=None,
                       progress: bool = True, augment=None, resize=None, transform=None):
    root, T, tf = _common(split, root, T, 10, augment,
                          dict(flip=0.5, roll=10, cutout=0.5), resize, transform)
    _need_dir(root, "n-caltech101", "data_root")
    base = _find_child(root, ("Caltech101",))
    if base is None:
        hint = f" Found {root / 'Caltech101.zip'}: unzip it in {root}." if (root / "Caltech101.zip").is_file() else ""
        raise SpikeformerError(f"n-caltech101: {root / 'Caltech101'} not found; expected "
                               f"{root}/Caltech101/<class>/image_0001.bin ... (from Caltech101.zip).{hint}")
    cache_root = _cache_root(root, "n-caltech101", cache_dir)
    samples, classes = _split_folder_dataset("n-caltech101", split, base, (".bin", ".npz"), None, cache_root)
    return EventFrameDataset(samples, (180, 240), T, split_by, cache_root, tf, workers, progress, classes,
                             "n-caltech101")
