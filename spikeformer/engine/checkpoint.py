"""Training checkpoints that survive being killed at any moment.

A checkpoint is a directory ``RUN/checkpoints/<tag>-<step>/`` holding ``model.safetensors`` (weights),
``train.safetensors`` (optimizer moments, EMA weights, torch RNG) and ``state.json`` (epoch, step, scalar optimizer
state, Python/NumPy RNG, best metric). It is written under a temporary name and renamed into place; only then is the
pointer ``RUN/checkpoints/<tag>.json`` replaced (``os.replace`` is atomic), and only then are older directories of the
tag deleted. A kill at any moment therefore leaves the pointer naming a complete checkpoint. ``RUN/<tag>.safetensors``
is a plain copy of the weights (also written atomically) for ``spikeformer eval`` and for sharing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..convert.checkpoint import save_weights
from ..errors import SpikeformerError


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _optimizer_split(opt_state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, st in opt_state["state"].items():
        scalars["state"][str(idx)] = {}
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = val
            else:
                scalars["state"][str(idx)][name] = val
    return tensors, scalars


def _optimizer_join(tensors: dict, scalars: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in scalars["state"].items()}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_training_state(run_dir: Path, tag: str, model, optimizer, state: dict, ema=None, scaler=None,
                        metadata: Optional[dict] = None) -> Path:
    """Write checkpoint ``tag`` ('last' or 'best') for the training state ``state`` (epoch, step, ...)."""
    from safetensors.torch import save_file

    ck_root = run_dir / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    name = f"{tag}-{state['step']:09d}"
    final = ck_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ck_root))
    try:
        save_weights(model, tmp / "model.safetensors", metadata)
        tensors, opt_scalars = _optimizer_split(optimizer.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        if ema is not None:
            for k, v in ema.state_dict().items():
                tensors[f"ema.{k}"] = v
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "train.safetensors"))
        np_state = np.random.get_state()
        full = dict(state)
        full["optimizer"] = opt_scalars
        full["rng_python"] = _jsonable(random.getstate())
        full["rng_numpy"] = [np_state[0], np_state[1].tolist(), *np_state[2:]]
        if scaler is not None:
            full["scaler"] = scaler.state_dict()
        _write_json_atomic(tmp / "state.json", full)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # same step saved twice (e.g. an epoch end that is also a step checkpoint)
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _write_json_atomic(ck_root / f"{tag}.json", {"dir": name, "epoch": state["epoch"], "step": state["step"]})
    # The user-facing weights file, then garbage: directories of this tag that the pointer no longer names.
    shutil.copyfile(final / "model.safetensors", run_dir / f".{tag}.safetensors.tmp")
    os.replace(run_dir / f".{tag}.safetensors.tmp", run_dir / f"{tag}.safetensors")
    for d in ck_root.iterdir():
        if d.is_dir() and d.name != name and (d.name.startswith(f"{tag}-") or d.name.startswith(f".{tag}-")):
            shutil.rmtree(d, ignore_errors=True)
    return final


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(o) for o in obj]
    return obj


def _tuplify(obj):
    if isinstance(obj, list):
        return tuple(_tuplify(o) for o in obj)
    return obj


def checkpoint_dir(run_dir: Path, tag: str = "last") -> Optional[Path]:
    ptr = run_dir / "checkpoints" / f"{tag}.json"
    if not ptr.is_file():
        return None
    try:
        d = run_dir / "checkpoints" / json.loads(ptr.read_text())["dir"]
    except (ValueError, KeyError) as e:
        raise SpikeformerError(f"{ptr} is damaged ({e}); delete it to resume from the previous checkpoint") from None
    if not (d / "state.json").is_file():
        raise SpikeformerError(f"{ptr} names {d}, which is incomplete; the run directory was modified by hand")
    return d


def load_training_state(ck: Path, model, optimizer, ema=None, scaler=None) -> dict:
    """Restore everything :func:`save_training_state` wrote; returns the state dict (epoch, step, ...)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ck / "model.safetensors")))
    tensors = load_file(str(ck / "train.safetensors"))
    state = json.loads((ck / "state.json").read_text())
    optimizer.load_state_dict(_optimizer_join(tensors, state.pop("optimizer")))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    random.setstate(_tuplify(state.pop("rng_python")))
    np_state = state.pop("rng_numpy")
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    sc = state.pop("scaler", None)
    if scaler is not None and sc:
        scaler.load_state_dict(sc)
    return state
