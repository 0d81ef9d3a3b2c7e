"""Named datasets: ``build_dataset(name, split, ...)`` returns a torch Dataset of ``(x, label)``.

``x`` is an image ``[C, H, W]`` for static data, or a frame sequence ``[T, C, H, W]`` for event data (the
DataLoader batches it to ``[B, T, C, H, W]``; the engine moves time first before calling the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch.utils.data import Dataset

from ..errors import SpikeformerError, suggest


@dataclass
class DatasetInfo:
    name: str
    builder: Callable[..., Dataset]  # builder(split, root=None, T=None, **kwargs)
    num_classes: int
    input_size: tuple  # (C, H, W) of one frame / image
    kind: str = "static"  # 'static' | 'events'
    needs_root: bool = True  # False for the embedded data
    description: str = ""
    default_model: Optional[str] = None
    extra: dict = field(default_factory=dict)


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, num_classes: int, input_size: tuple, **kwargs) -> Callable:
    """Decorator for ``builder(split, root=None, T=None, **kwargs) -> Dataset``."""

    def deco(fn):
        _DATASETS[name] = DatasetInfo(name=name, builder=fn, num_classes=num_classes, input_size=tuple(input_size),
                                      **kwargs)
        return fn

    return deco


def get_dataset_info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        raise SpikeformerError(f"unknown dataset {name!r}.{suggest(name, _DATASETS)} Known: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(name: str, split: str, root: Optional[str] = None, T: Optional[int] = None, **kwargs: Any) -> Dataset:
    """Build split ``'train'`` or ``'test'`` of a named dataset."""
    info = get_dataset_info(name)
    if split not in ("train", "test"):
        raise SpikeformerError(f"split must be 'train' or 'test', not {split!r}")
    if info.needs_root and not root:
        raise SpikeformerError(
            f"dataset {name!r} needs its files: pass --set data_root=DIR (see the README's 'Datasets' section)"
        )
    representation = kwargs.pop("representation", "frames")
    voxel = {k: kwargs.pop(k) for k in ("bins", "size", "normalize") if k in kwargs} if representation == "voxel" \
        else {}
    if representation != "frames" and info.kind != "events":
        raise SpikeformerError(f"dataset {name!r} is not an event dataset: representation={representation!r} needs "
                               "one (e.g. cifar10-dvs, n-caltech101, events-digits)")
    _check_options(info, kwargs)
    dataset = info.builder(split, root=root, T=T, **kwargs)
    if representation == "frames":
        return dataset
    from .voxel import voxel_option  # voxel grids (time bins x polarities as channels), as MST is fed events

    return voxel_option(dataset, representation, **voxel)


def _check_options(info: DatasetInfo, kwargs: dict) -> None:
    """Reject options the builder does not take (a typo in data_kwargs must not be ignored silently)."""
    import inspect

    params = inspect.signature(info.builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the builder documents no fixed option list
    known = [n for n in params if n not in ("split", "root", "T", "name")]
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise SpikeformerError(
            f"dataset {info.name!r} has no option {unknown[0]!r}.{suggest(unknown[0], known)} "
            f"Its options: {', '.join(known) or 'none'}"
        )
