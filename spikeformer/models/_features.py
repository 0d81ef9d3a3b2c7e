"""``features_only=True``: per-stage feature maps of any family, for detection and segmentation heads (timm's
``features_only`` / ``out_indices`` contract).

A family declares ``self.feature_info``, one dict per stage in the order the stages run, as timm models do:

* ``num_chs``: channels of the stage's map;
* ``reduction``: its stride relative to the input (non-decreasing from stage to stage);
* ``module``: the dotted name (as in ``named_modules()``) of the submodule whose output is the stage's output.

:func:`features_model` wraps a built classifier into :class:`SpikingFeatures`: its forward runs the classifier's trunk
(``forward_features_per_step``) with forward hooks on the selected modules, stops right after the deepest one has
run (later blocks, pooling and head are not computed), and returns one map per selected stage.

Output layout. A stage's output may be spike frames ``[T, B, C, H, W]`` (channels-last frames included), frames
folded over time ``[T*B, C, H, W]``, tokens ``[T, B, N, C]`` or ``[T*B, N, C]`` (token families: Spikformer,
Spikingformer, Spikeformer, Swin-style layers) or channels-last maps ``[T, B, H, W, C]``; the layout is read from the
shape, and tokens are laid back on their ``H/r x W/r`` grid. Every map is returned as

* ``feature_time="mean"`` (default): ``[B, C, H', W']``, the mean over the time steps (firing rates for spike
  maps, mean membrane input for real-valued ones): what the usual detection/segmentation heads take;
* ``feature_time="steps"``: ``[T, B, C, H', W']``, every time step, for spiking heads.

A hooked module is called as a plain module: a fused kernel that would bypass its call (BatchNorm + neuron) is not
taken for it, so on the fast numerics features may differ from the classifier's own trunk by rounding only; with
``numerics="exact"`` they are the same tensors.

The wrapper holds the classifier as ``model`` (state_dict keys ``model.<classifier key>``, as timm's
``FeatureGetterNet``), with its classifier removed (``reset_classifier(0)``). ``create_model(...,
checkpoint_path=...)`` loads the classifier's weights before wrapping.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ModelOptionError, SpikeformerError

FEATURE_TIME = ("mean", "steps")


class _Stop(Exception):
    """Raised by the hook of the deepest selected stage: nothing after it is needed."""


def stem_feature_info(stem: nn.Module, prefix: str = "patch_embed") -> tuple[list[dict], int]:
    """``feature_info`` entries of a :class:`~spikeformer.layers.stems.SpikingPatchStem`, one per stage that ends in
    a max-pool: that stage's neuron output (spikes at the finest resolution of that width, as timm's ResNets name
    the activation before their max-pool), and the stem's total reduction."""
    names = {id(m): n for n, m in stem.named_modules()}
    info, r = [], 1
    for i in sorted(stem.pool_stages):
        conv, _, neuron = stem.stage(i)
        if neuron is None or (stem.rpe == "membrane" and i == stem.stages - 1):
            raise ValueError(f"stem stage {i} pools before its neuron: no module outputs its map before the pool")
        info.append(dict(num_chs=conv.out_channels, reduction=r, module=f"{prefix}.{names[id(neuron)]}"))
        r *= 2
    return info, r


def check_feature_info(model: nn.Module) -> list[dict]:
    """The model's ``feature_info`` (a list of dicts), checked: required keys, positive channels, non-decreasing
    reductions, modules that exist."""
    name = getattr(model, "model_name", type(model).__name__)
    info = getattr(model, "feature_info", None)
    if not info:
        raise ModelOptionError(
            f"{name} declares no feature_info, so features_only=True is not available for it; its family must list "
            "its stages as self.feature_info = [dict(num_chs=..., reduction=..., module=...), ...]"
        )
    modules = dict(model.named_modules())
    prev = 1
    for i, fi in enumerate(info):
        missing = [k for k in ("num_chs", "reduction", "module") if k not in fi]
        if missing:
            raise SpikeformerError(f"{name}.feature_info[{i}] lacks {missing}; every stage needs num_chs, reduction "
                                   "and module")
        if fi["num_chs"] <= 0 or fi["reduction"] < prev:
            raise SpikeformerError(
                f"{name}.feature_info[{i}]: num_chs must be positive and reductions non-decreasing; got {fi}"
            )
        prev = fi["reduction"]
        if fi["module"] not in modules:
            raise SpikeformerError(f"{name}.feature_info[{i}] names module {fi['module']!r}, which the model has not")
    return [dict(fi) for fi in info]


def take_indices(n: int, out_indices: Union[None, int, Sequence[int]]) -> tuple[int, ...]:
    """Absolute stage indices, as timm reads ``out_indices``: ``None`` all, an int ``k`` the last ``k``, a sequence
    the stages named (negative from the end)."""
    if out_indices is None:
        return tuple(range(n))
    if isinstance(out_indices, int):
        if not 0 < out_indices <= n:
            raise ModelOptionError(f"out_indices={out_indices} (the last k stages) must be in 1..{n}")
        return tuple(range(n - out_indices, n))
    idx = []
    for i in out_indices:
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise ModelOptionError(f"out_indices {tuple(out_indices)}: stage {i} does not exist; this model has "
                                   f"{n} stages (0..{n - 1}, or negative from the end)")
        idx.append(j)
    if not idx or len(set(idx)) != len(idx) or idx != sorted(idx):
        raise ModelOptionError(f"out_indices {tuple(out_indices)} must name distinct stages in increasing order")
    return tuple(idx)


def _grid(n_tokens: int, height: int, width: int, reduction: int) -> Optional[tuple[int, int]]:
    # strided convolutions/pools with "same" padding give ceil(H / r); patchifying ones floor(H / r)
    for h, w in ((math.ceil(height / reduction), math.ceil(width / reduction)),
                 (height // reduction, width // reduction)):
        if h * w == n_tokens:
            return h, w
    return None


def as_frames(y, T: int, B: int, C: int, size: tuple[int, int], reduction: int, where: str) -> torch.Tensor:
    """A stage's output in any of the layouts of the module docstring -> ``[T, B, C, H', W']``."""
    if isinstance(y, (tuple, list)):  # e.g. Swin layers return (tokens, H, W)
        y = next((t for t in y if isinstance(t, torch.Tensor)), None)
    if not isinstance(y, torch.Tensor):
        raise SpikeformerError(f"feature module {where} returned no tensor")
    s = tuple(y.shape)
    tokens = None
    if y.dim() == 5 and s[:3] == (T, B, C):
        return y
    if y.dim() == 5 and s[:2] == (T, B) and s[-1] == C:
        return y.permute(0, 1, 4, 2, 3)
    if y.dim() == 4 and s[0] == T * B and s[1] == C:
        return y.unflatten(0, (T, B))
    if y.dim() == 4 and s[:2] == (T, B) and s[-1] == C:
        tokens = y
    elif y.dim() == 3 and s[0] == T * B and s[-1] == C:
        tokens = y.unflatten(0, (T, B))
    elif y.dim() == 4 and s[0] == T * B and s[-1] == C:
        return y.unflatten(0, (T, B)).permute(0, 1, 4, 2, 3)
    if tokens is None:
        raise SpikeformerError(
            f"feature module {where} returned shape {s}, which is none of [T, B, C, H, W], [T*B, C, H, W], "
            f"[T, B, H, W, C], [T, B, N, C], [T*B, N, C] for T={T}, B={B}, C={C}; fix its feature_info entry"
        )
    grid = _grid(tokens.shape[2], size[0], size[1], reduction)
    if grid is None:
        raise SpikeformerError(
            f"feature module {where}: {tokens.shape[2]} tokens do not tile an input of {size[0]}x{size[1]} at "
            f"reduction {reduction}; fix its feature_info entry"
        )
    return tokens.transpose(-1, -2).reshape(T, B, C, *grid)


class FeatureInfo:
    """The selected stages' ``feature_info``, with the accessors of timm's ``FeatureInfo`` (``channels()``,
    ``reduction()``, ``module_name()``, ``get``, ``get_dicts``, ``info``, ``out_indices``; an ``idx`` argument picks
    stages by absolute index instead of the selected ones). Ours, so that ``features_only`` does not import timm."""

    def __init__(self, feature_info: list[dict], out_indices: Sequence[int]):
        self.info = [dict(fi, index=i) for i, fi in enumerate(feature_info)]
        self.out_indices = tuple(out_indices)

    def from_other(self, out_indices: Union[None, int, Sequence[int]]) -> "FeatureInfo":
        return FeatureInfo(self.info, take_indices(len(self.info), out_indices))

    def get(self, key: str, idx: Union[None, int, Sequence[int]] = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Optional[Sequence[str]] = None, idx: Union[None, int, Sequence[int]] = None):
        pick = lambda d: dict(d) if keys is None else {k: d[k] for k in keys}  # noqa: E731
        if isinstance(idx, int):
            return pick(self.info[idx])
        return [pick(self.info[i]) for i in (self.out_indices if idx is None else idx)]

    def channels(self, idx: Union[None, int, Sequence[int]] = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: Union[None, int, Sequence[int]] = None):
        return self.get("reduction", idx)

    def module_name(self, idx: Union[None, int, Sequence[int]] = None):
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, info={self.info})"


class SpikingFeatures(nn.Module):
    """The per-stage maps of a classifier (see the module docstring); built by :func:`features_model`.

    ``forward(x)`` takes what the classifier takes (images ``[B, C, H, W]`` repeated over T, or frames
    ``[T, B, C, H, W]``) and returns a list with one map per selected stage. ``feature_info`` is a
    :class:`FeatureInfo` over the selected stages (``channels()``, ``reduction()``, ``module_name()``, as timm's).
    """

    def __init__(self, model: nn.Module, out_indices: Union[None, int, Sequence[int]] = None,
                 feature_time: str = "mean"):
        super().__init__()
        if feature_time not in FEATURE_TIME:
            raise ModelOptionError(f"feature_time must be one of {FEATURE_TIME}; got {feature_time!r}")
        info = check_feature_info(model)
        self.out_indices = take_indices(len(info), out_indices)
        self.feature_info = FeatureInfo(info, self.out_indices)
        self.feature_time = feature_time
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(0)
        self.model = model
        for k in ("T", "in_chans", "model_name", "numerics"):
            if hasattr(model, k):
                setattr(self, k, getattr(model, k))
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is not None:
            self.pretrained_cfg = self.default_cfg = dict(cfg)

    @property
    def output_fmt(self) -> str:
        """timm's name of the maps' layout (``"TNCHW"``: ours, the time steps first)."""
        return "NCHW" if self.feature_time == "mean" else "TNCHW"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() == 5:
            T, B = x.shape[:2]
        elif x.dim() == 4:
            T, B = getattr(self.model, "T", 1), x.shape[0]
        else:
            raise SpikeformerError(
                f"expected images [B, C, H, W] or frame sequences [T, B, C, H, W]; got shape {tuple(x.shape)}"
            )
        size = tuple(x.shape[-2:])
        dicts = self.feature_info.info
        last = self.out_indices[-1]
        got: dict[int, object] = {}
        handles = []

        def hook(i):
            def fn(module, args, out):
                if i in got:
                    raise SpikeformerError(f"feature module {dicts[i]['module']!r} runs more than once per forward; "
                                           "feature_info must name a module that runs once")
                got[i] = out
                if i == last:
                    raise _Stop

            return fn

        try:
            for i in self.out_indices:
                handles.append(self.model.get_submodule(dicts[i]["module"]).register_forward_hook(hook(i)))
            self.model.forward_features_per_step(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [dicts[i]["module"] for i in self.out_indices if i not in got]
        if missing:
            raise SpikeformerError(f"feature modules {missing} did not run before the deepest selected stage; "
                                   "feature_info must list stages in the order they run")
        outs = []
        for i in self.out_indices:
            fi = dicts[i]
            y = as_frames(got[i], T, B, fi["num_chs"], size, fi["reduction"], repr(fi["module"]))
            outs.append(y.mean(0) if self.feature_time == "mean" else y)
        return outs


def features_model(model: nn.Module, out_indices: Union[None, int, Sequence[int]] = None,
                   feature_time: str = "mean") -> SpikingFeatures:
    """``model`` (a built classifier declaring ``feature_info``) as a per-stage feature extractor; the classifier
    is modified in place (its head removed) and held as ``.model``."""
    return SpikingFeatures(model, out_indices, feature_time)
