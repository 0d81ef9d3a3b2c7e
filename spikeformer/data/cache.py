"""On-disk frame cache: one file per sample under a directory keyed by (T, split_by, sensor size).

Writes are atomic (write a temporary file in the same directory, then ``os.replace``), so a run killed mid-write
leaves at worst a stray ``.tmp`` file and never a half-written cache entry; an entry that is unreadable or has
the wrong shape anyway (disk trouble, a copy interrupted outside our control) is deleted and rebuilt from the
events. A new T, split or size uses a new directory, so it never reads frames made with other parameters.
"""

from __future__ import annotations

import os
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

CACHE_DIRNAME = "spikeformer_cache"


def cache_key(T: int, split_by: str, size: Sequence[int]) -> str:
    H, W = size
    return f"frames_T{T}_{split_by}_{H}x{W}"


class FrameCache:
    def __init__(self, root, T: int, split_by: str, size: Sequence[int]):
        self.dir = Path(root) / cache_key(T, split_by, size)
        self.shape = (int(T), 2, int(size[0]), int(size[1]))

    def path(self, sample_id: str) -> Path:
        return self.dir / f"{sample_id}.npz"

    def has(self, sample_id: str) -> bool:
        return self.path(sample_id).is_file()

    def load(self, sample_id: str) -> Optional[np.ndarray]:
        """The cached frames as float32, or None when missing or damaged (a damaged file is removed)."""
        path = self.path(sample_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                frames = z["frames"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            frames = None
        if frames is None or frames.shape != self.shape:
            path.unlink(missing_ok=True)
            return None
        return frames.astype(np.float32)

    def save(self, sample_id: str, frames: np.ndarray) -> None:
        if frames.shape != self.shape:
            raise ValueError(f"frames of shape {frames.shape} do not belong in a cache of {self.shape}")
        path = self.path(sample_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Event counts are integers; uint16 storage is exact and a quarter the size of float32 once compressed.
        stored = frames.astype(np.uint16) if frames.max(initial=0) <= np.iinfo(np.uint16).max else frames
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, frames=stored)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def run_tasks(fn: Callable, tasks: Sequence, workers: Optional[int] = None, desc: str = "",
              progress: bool = True) -> list:
    """``[fn(task) for task in tasks]`` on a process pool (``workers`` > 1) with a tqdm progress bar.

    Exceptions raised by ``fn`` (e.g. SpikeformerError naming a bad file) propagate unchanged.
    """
    from tqdm.auto import tqdm

    tasks = list(tasks)
    if workers is None:
        workers = min(len(tasks), os.cpu_count() or 1, 8)
    results = []
    # a bar redraws its line: on a terminal only; in a log file one line says what is being built
    bars = progress and bool(tasks) and _stderr_is_terminal()
    if progress and tasks and not bars:
        print(f"{desc}: building {len(tasks)} cache entries", file=sys.stderr, flush=True)
    with tqdm(total=len(tasks), desc=desc, unit="file", disable=not bars) as bar:
        if workers <= 1:
            for task in tasks:
                results.append(fn(task))
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(fn, tasks, chunksize=max(1, len(tasks) // (workers * 16))):
                results.append(r)
                bar.update()
    return results


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def stray_temp_files(directory) -> Iterable[Path]:
    """Temporary files left by interrupted writes (safe to delete when no build is running)."""
    d = Path(directory)
    return d.rglob(".*.tmp") if d.is_dir() else iter(())
