"""The model registry: every published configuration under one name, also visible to ``timm.create_model``.

A family file declares a ``default_cfgs`` table (input size, T, classes, normalisation, published accuracy and
parameter count) and one small function per configuration decorated with :func:`register_model`.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.abc
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from ..errors import ModelOptionError, SpikeformerError, suggest

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# timm reads pretrained configs from the registering module's ``default_cfgs``; the functions we hand to timm
# live here, so this table holds the timm-compatible part of each config.
default_cfgs: dict[str, dict] = {}

_TIMM_KEYS = ("input_size", "num_classes", "mean", "std", "crop_pct", "interpolation", "first_conv", "classifier")


@dataclass
class ModelInfo:
    """What the registry knows about one configuration."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    T: int
    num_classes: int
    dataset: str  # the data the published row was trained on (a name of spikeformer.data)
    published: dict[str, float] = field(default_factory=dict)  # dataset -> top-1 %
    paper_params_m: Optional[float] = None  # parameter count printed in the paper, in millions
    paper: str = ""
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    first_conv: str = ""
    classifier: str = "head"
    notes: str = ""
    task: str = "classify"  # "classify" (SpikingClassifier) or "reconstruct" (image reconstruction)
    # training settings of `spikeformer train` for this model, under the config file, the flags and --set
    recipe: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "builder"}
        return d


_REGISTRY: dict[str, ModelInfo] = {}


def cfg(**kwargs) -> dict:
    """A ``default_cfgs`` entry; see :class:`ModelInfo` for the keys."""
    return kwargs


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` (named after the configuration) with spikeformer and with timm.

    The configuration's metadata comes from ``default_cfgs[fn.__name__]`` in the family's module.
    """
    name = fn.__name__
    module = sys.modules[fn.__module__]
    table = getattr(module, "default_cfgs", {})
    if name not in table:
        raise RuntimeError(f"{fn.__module__}.default_cfgs has no entry for {name}")
    meta = dict(table[name])
    family = meta.pop("family", fn.__module__.rsplit(".", 1)[-1])
    info = ModelInfo(name=name, family=family, builder=fn, **meta)
    _REGISTRY[name] = info

    @functools.wraps(fn)
    def timm_entry(pretrained: bool = False, **kwargs):
        if pretrained:
            raise SpikeformerError(
                f"{name}: no weights are downloaded; pass checkpoint_path=PATH to load a local checkpoint"
            )
        return _build(info, kwargs, kwargs.pop("numerics", "fast"))

    timm_entry.__module__ = __name__
    default_cfgs[name] = {k: getattr(info, k) for k in _TIMM_KEYS if getattr(info, k)}
    default_cfgs[name]["paper_name"] = info.paper
    _TIMM_PENDING.append(timm_entry)
    if "timm.models" in sys.modules and not _TimmHook.waiting():
        _register_pending_with_timm()
    else:
        _TimmHook.install()
    return fn


# timm (and torchvision, which it imports) takes about 2 s to import, more than the rest of the package: the
# entries are handed to timm's registry when ``timm.models`` is imported, now or later, not at our import.
_TIMM_PENDING: list[Callable[..., nn.Module]] = []


def _register_pending_with_timm() -> None:
    from timm.models import register_model as timm_register

    while _TIMM_PENDING:
        timm_register(_TIMM_PENDING.pop(0))


class _TimmHook(importlib.abc.MetaPathFinder):
    """Registers the pending entries right after ``timm.models`` has been executed."""

    _instance: Optional["_TimmHook"] = None

    @classmethod
    def install(cls) -> None:
        if cls._instance is None:
            cls._instance = cls()
            sys.meta_path.insert(0, cls._instance)

    @classmethod
    def waiting(cls) -> bool:
        return cls._instance is not None

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm.models":
            return None
        sys.meta_path.remove(self)
        type(self)._instance = None
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:  # pragma: no cover - timm is a declared dependency
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register_pending_with_timm()

        spec.loader.exec_module = exec_module
        return spec


FEATURE_OPTIONS = ("out_indices", "feature_time")


def _build(info: ModelInfo, overrides: dict, numerics: str = "fast",
           checkpoint_path: Optional[str] = None) -> nn.Module:
    from ..layers.numerics import check_numerics, set_numerics

    check_numerics(numerics)
    kwargs = dict(overrides)
    # timm's features_only contract (spikeformer.models._features): built as the classifier, then wrapped
    features_only = bool(kwargs.pop("features_only", False))
    feature_kw = {k: kwargs.pop(k) for k in FEATURE_OPTIONS if k in kwargs}
    if feature_kw and not features_only:
        raise ModelOptionError(f"{info.name}: {sorted(feature_kw)} select feature maps; pass features_only=True")
    # what timm.create_model passes to every factory
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.pop("cache_dir", None)
    kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    kwargs.setdefault("num_classes", info.num_classes)
    kwargs.setdefault("T", info.T)
    try:
        model = info.builder(**kwargs)
    except TypeError as e:
        raise ModelOptionError(f"{info.name}: bad model option ({e}).{_suggest_option(info, kwargs, str(e))}") from None
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    model.pretrained_cfg = {**info.as_dict(), **overlay}
    model.default_cfg = model.pretrained_cfg
    model.model_name = info.name
    set_numerics(model, numerics)
    if checkpoint_path is not None:
        from ..convert.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    if features_only:
        from ._features import features_model

        model = features_model(model, **feature_kw)
    return model


def _suggest_option(info: ModelInfo, kwargs: dict, message: str) -> str:
    """A ' Did you mean ...?' hint for an unexpected keyword, from the model class's constructor arguments."""
    import inspect
    import re

    m = re.search(r"unexpected keyword argument '([^']+)'", message)
    if not m:
        return ""
    try:
        model_cls = type(info.builder(**{k: v for k, v in kwargs.items() if k != m.group(1)}))
    except Exception:  # noqa: BLE001 - only for the hint
        return ""
    return suggest(m.group(1), [p for p in inspect.signature(model_cls.__init__).parameters if p != "self"])


def get_model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise SpikeformerError(
            f"unknown model {name!r}.{suggest(name, _REGISTRY)} Run 'spikeformer models' for the full list."
        )
    return _REGISTRY[name]


def list_models(pattern: str = "*", family: Optional[str] = None, task: Optional[str] = None) -> list[str]:
    """Names of the registered models matching a shell-style ``pattern``, optionally of one ``family`` or ``task``
    (``"classify"``, ``"reconstruct"``)."""
    return sorted(
        n for n, i in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or i.family == family)
        and (task is None or i.task == task)
    )


def create_model(name: str, checkpoint_path: Optional[str] = None, numerics: str = "fast", **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace config values (``num_classes``, ``T``, ``neuron``, ...).

    ``numerics="fast"`` (default) lets every block take its fast kernels (outputs differ from the official code's by
    rounding only); ``"exact"`` runs the official code's operations, whose logits equal the official code's bit for
    bit given the same weights (:mod:`spikeformer.layers.numerics`).

    ``checkpoint_path`` loads weights: one of our ``.safetensors`` checkpoints, or an official checkpoint of the
    family (``.pth``/``.pth.tar``, read with ``weights_only=True``), remapped by the family's
    ``checkpoint_filter_fn``.

    ``features_only=True`` returns the per-stage feature maps instead of logits (timm's contract; the classifier's
    checkpoint is loaded first): ``out_indices`` selects stages (default all; an int ``k``: the last ``k``),
    ``feature_time="mean"`` (default) gives maps ``[B, C, H, W]`` averaged over time, ``"steps"`` keeps
    ``[T, B, C, H, W]``; see :mod:`spikeformer.models._features`.
    """
    return _build(get_model_info(name), overrides, numerics, checkpoint_path)
