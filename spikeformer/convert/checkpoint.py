"""Read checkpoints without unpickling code, remap official ones, write ours (safetensors, atomically).

Official repositories save ``torch.save`` dicts: timm's ``{'state_dict': ..., 'state_dict_ema': ...}``, the DVS
scripts' and SpikingResformer's ``{'model': ...}``, sometimes with a ``module.`` prefix from DDP. They are read
with ``torch.load(weights_only=True)``, unwrapped, and passed through the family's ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import SpikeformerError

FORMAT_TAG = "spikeformer"
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


def _atomic_path(path: Path):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def save_weights(model_or_sd, path: str | os.PathLike, metadata: Optional[dict] = None) -> Path:
    """Write a state_dict as safetensors, atomically (a temporary file renamed over the target)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    meta = {"format": FORMAT_TAG}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tmp = _atomic_path(path)
    try:
        save_file(sd, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of one of our safetensors files (JSON values decoded), or {} for other files."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def load_state_dict_file(path: str | os.PathLike, use_ema: bool = False) -> tuple[dict, bool]:
    """Read a weights file; returns ``(state_dict, is_ours)``. Never unpickles code."""
    path = Path(path)
    if path.is_dir():
        for cand in ("best.safetensors", "last.safetensors", "model.safetensors"):
            if (path / cand).is_file():
                path = path / cand
                break
        else:
            raise SpikeformerError(f"{path} is a directory without best.safetensors/last.safetensors; pass a file")
    if not path.is_file():
        raise SpikeformerError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:
            raise SpikeformerError(f"{path}: not a readable safetensors file ({e}); is it truncated?") from None
        return sd, read_metadata(path).get("format") == FORMAT_TAG
    try:
        # timm's CheckpointSaver also stores the argparse.Namespace of the run; allow exactly that one class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code objects, RuntimeError/EOFError for truncation
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpikeformerError(
            f"{path}: cannot read it as a PyTorch checkpoint with weights_only=True ({msg}). "
            "The file may be truncated, or it stores Python objects that we refuse to unpickle; "
            "re-save just the state_dict"
        ) from None
    return _unwrap(obj, path, use_ema), False


def _unwrap(obj, path, use_ema: bool) -> dict:
    if not isinstance(obj, dict):
        raise SpikeformerError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    keys = (EMA_KEYS + WRAPPER_KEYS) if use_ema else (WRAPPER_KEYS + EMA_KEYS)
    for k in keys:
        if isinstance(obj.get(k), dict):
            obj = obj[k]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise SpikeformerError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:8]})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _describe_mismatch(model: nn.Module, sd: dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, use_ema: bool = False, strict: bool = True):
    """Load weights into ``model`` from one of our checkpoints or an official one of the model's family."""
    sd, ours = load_state_dict_file(path, use_ema)
    if not ours:
        family = sys.modules[type(model).__module__]
        fn = getattr(family, "checkpoint_filter_fn", None)
        if fn is not None:
            sd = fn(sd, model)
    problem = _describe_mismatch(model, sd) if strict else ""
    if problem:
        name = getattr(model, "model_name", type(model).__name__)
        raise SpikeformerError(
            f"{path} does not fit {name}: {problem}. Is it a checkpoint of another model or configuration?"
        )
    model.load_state_dict(sd, strict=strict)
    return model
