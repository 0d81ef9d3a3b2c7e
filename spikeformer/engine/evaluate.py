"""Evaluate a checkpoint file (ours or an official one) on a named dataset."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

from ..convert.checkpoint import read_metadata
from ..data import get_dataset_info
from ..errors import SpikeformerError
from ..models import create_model, get_model_info
from . import distributed as D
from .config import DEFAULTS, load_config_file, merge


def evaluate_checkpoint(path: str, data: Optional[str] = None, model: Optional[str] = None,
                        sets: Optional[dict] = None, progress: bool = True) -> dict:
    """Load ``path`` (a .safetensors of ours, a run directory, or an official checkpoint with ``model``) and
    evaluate on ``data`` (default: the data the checkpoint was trained on)."""
    from .train import build_data, evaluate

    p = Path(path)
    run_cfg = {}
    if p.is_dir():
        if (p / "config.yaml").is_file():
            run_cfg = load_config_file(p / "config.yaml")
        p = p / "best.safetensors" if (p / "best.safetensors").is_file() else p / "last.safetensors"
    elif (p.parent / "config.yaml").is_file():
        run_cfg = load_config_file(p.parent / "config.yaml")
    if not p.is_file():
        raise SpikeformerError(f"checkpoint not found: {p}")
    meta = read_metadata(p) if p.suffix == ".safetensors" else {}
    name = model or meta.get("model") or run_cfg.get("model")
    if not name:
        raise SpikeformerError(f"{p} does not say which model it holds; pass --model NAME")
    if get_model_info(name).task == "reconstruct":  # PSNR / SSIM, not top-1
        from .reconstruct import evaluate_recon_checkpoint

        return evaluate_recon_checkpoint(path, data, model, sets, progress)
    cfg = copy.deepcopy(DEFAULTS)
    merge(cfg, {k: v for k, v in run_cfg.items() if k in DEFAULTS}, str(p.parent / "config.yaml"))
    cfg["model"] = name
    cfg["data"] = data or meta.get("data") or run_cfg.get("data") or cfg["data"]
    merge(cfg, sets or {}, "--set")
    kwargs = dict(meta.get("model_kwargs") or cfg.get("model_kwargs") or {})
    kwargs["num_classes"] = meta.get("num_classes") or get_dataset_info(cfg["data"]).num_classes
    if cfg.get("T"):
        kwargs["T"] = cfg["T"]
    net = create_model(name, checkpoint_path=str(p), numerics=cfg["numerics"], **kwargs)
    info = D.setup(cfg["device"])
    try:
        net.to(info.device)
        _, test = build_data(cfg, net)
        out = evaluate(net, test, cfg, info, progress)
    except BaseException:
        D.teardown(clean=False)
        raise
    D.teardown()
    out.update(model=name, data=cfg["data"], checkpoint=str(p))
    return out
