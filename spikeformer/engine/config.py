"""Training configuration: defaults, YAML recipe files, and ``--set key=value`` overrides.

Every key of :data:`DEFAULTS` may be set in a YAML file (``--config``) and overridden on the command line; keys of
the dict-valued entries (``model_kwargs``, ``data_kwargs``) are reached with dots (``--set model_kwargs.depth=2``).
Unknown keys are errors, so a typo never silently trains the wrong thing.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import SpikeformerError, suggest

DEFAULTS: dict[str, Any] = {
    # what to train
    "task": "classify",  # classify | reconstruct (spike-camera image reconstruction)
    "model": None,  # None: the dataset's default model (digits -> spikformer_digits_1_64)
    "data": "digits",
    "data_root": None,
    "T": None,  # time steps; None keeps the model's published T
    "model_kwargs": {},
    "data_kwargs": {},
    "recon": {},  # --task reconstruct: loss weights, edge_mode, vgg_weights (a local VGG file), report_samples
    # schedule
    "epochs": 15,
    "batch_size": 32,  # global batch: split evenly across torchrun processes
    "accum_steps": 1,
    "optimizer": "adamw",  # adamw | adam | sgd | lamb
    "lr": 3e-3,
    "weight_decay": 0.01,
    "momentum": 0.9,
    "betas": [0.9, 0.999],
    "sched": "cosine",  # cosine | step | constant
    "warmup_epochs": 1,
    "warmup_lr": 1e-5,
    "min_lr": 1e-5,
    "decay_epochs": 30,  # step schedule
    "decay_rate": 0.1,
    "cooldown_epochs": 0,  # timm-style: trained at min_lr after the schedule (epochs + cooldown in total)
    "label_smoothing": 0.1,
    "clip_grad": 1.0,  # max grad norm; null disables
    "amp": "none",  # none | bf16 | fp16
    "reuse_memory": True,  # CPU, glibc: keep freed memory for reuse, not with checkpoint_blocks (engine/runtime.py)
    "numerics": "fast",  # fast | exact (the official code's operations and bits; layers/numerics.py)
    "ema_decay": 0.0,  # 0 disables the weight EMA
    "sync_bn": False,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_off_epoch": None,
    # augmentation of the training split (dataset-specific names, applied by the data package when supported)
    "augment": None,
    # bookkeeping
    "seed": 0,
    "num_workers": 0,
    "eval_every": 1,
    "log_every": 200,  # without progress bars (log files), a line every N optimizer steps of epochs longer than N
    "checkpoint_every": 0,  # also checkpoint every N optimizer steps (0: only at the end of each epoch)
    "stop_after": None,  # end this invocation after N epochs as if interrupted; --resume continues
    "max_steps": None,  # end training after N optimizer steps (smoke tests), then evaluate
    "out": None,  # run directory; default runs/<model>-<data>-<time>
    "report": True,  # write report.html at the end of training
    "device": "auto",  # auto | cpu | cuda
    "published_top1": None,  # informational, recipe files record the paper's number here
    "notes": None,
}


# YAML 1.1 (PyYAML) reads "1e-3" and "5E4" as strings: a float needs a dot ("1.0e-3"). Numbers written either way
# are numbers here, in --set values and in config files alike.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _coerce(value: str) -> Any:
    try:
        return _numbers(yaml.safe_load(value))
    except yaml.YAMLError:
        return value


def load_config_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpikeformerError(f"config file not found: {p}")
    try:
        data = _numbers(yaml.safe_load(p.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpikeformerError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpikeformerError(f"{p}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def merge(cfg: dict, updates: dict, source: str) -> dict:
    """Apply ``updates`` to ``cfg`` (a full config), rejecting unknown keys."""
    for key, value in updates.items():
        set_key(cfg, key, value, source)
    return cfg


def set_key(cfg: dict, key: str, value: Any, source: str) -> None:
    head, _, rest = key.partition(".")
    if head not in DEFAULTS:
        raise SpikeformerError(
            f"unknown config key {head!r} in {source}.{suggest(head, DEFAULTS)} "
            f"Valid keys: {', '.join(sorted(DEFAULTS))}"
        )
    if rest:
        if not isinstance(DEFAULTS[head], dict):
            raise SpikeformerError(f"config key {head!r} takes a value, not sub-keys ({key!r} in {source})")
        cfg[head] = dict(cfg.get(head) or {})
        cfg[head][rest] = value
    elif isinstance(DEFAULTS[head], dict) and value is not None and not isinstance(value, dict):
        raise SpikeformerError(f"config key {head!r} takes a mapping (in {source}); set sub-keys as {head}.NAME=VALUE")
    else:
        cfg[head] = value


def parse_sets(pairs: Iterable[str]) -> dict:
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise SpikeformerError(f"--set expects key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = _coerce(v)
    return out


def build_config(config_file: str | None = None, sets: Iterable[str] = (), **cli: Any) -> dict:
    """Defaults <- the model's own recipe (for the keys none of the rest sets) <- config file <- CLI flags (those not
    None) <- ``--set`` pairs."""
    cfg = copy.deepcopy(DEFAULTS)
    layers = []
    if config_file:
        layers.append((load_config_file(config_file), str(config_file)))
    layers.append(({k: v for k, v in cli.items() if v is not None}, "the command line"))
    layers.append((parse_sets(sets), "--set"))
    for updates, source in layers:
        merge(cfg, updates, source)
    given = {key.partition(".")[0] for updates, _ in layers for key in updates}
    for key, value in model_recipe(cfg).items():
        if key not in given:
            set_key(cfg, key, copy.deepcopy(value), "the model's recipe")
    validate(cfg)
    return cfg


def model_recipe(cfg: dict) -> dict:
    """The training settings registered with the configured model (``recipe`` in its ``default_cfgs`` entry; the
    dataset's default model when none is named), or ``{}`` (unknown names are reported when the model is built)."""
    from ..data import get_dataset_info
    from ..models.registry import get_model_info

    try:
        name = cfg["model"] or get_dataset_info(cfg["data"]).default_model
        return dict(get_model_info(name).recipe) if name else {}
    except SpikeformerError:
        return {}


def validate(cfg: dict) -> None:
    choices = {"optimizer": ("adamw", "adam", "sgd", "lamb"), "sched": ("cosine", "step", "constant"),
               "amp": ("none", "bf16", "fp16"), "device": ("auto", "cpu", "cuda")}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            raise SpikeformerError(f"{key} must be one of {', '.join(allowed)}; got {cfg[key]!r}")
    for key in ("epochs", "batch_size", "accum_steps"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise SpikeformerError(f"{key} must be a positive integer; got {cfg[key]!r}")
    for key in ("lr", "weight_decay", "label_smoothing", "min_lr", "warmup_lr"):
        if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise SpikeformerError(f"{key} must be a non-negative number; got {cfg[key]!r}")


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
