"""The training loop: build, loop, evaluate, checkpoint — one screen per concern.

Surrogate-gradient BPTT (the neurons' backward runs through time), AdamW/Adam/SGD/Lamb, warmup + cosine (per
step), label smoothing, gradient clipping, optional bf16/fp16 autocast, EMA, gradient accumulation, torchrun/DDP.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import build_dataset, get_dataset_info
from ..errors import SpikeformerError
from ..layers.numerics import check_numerics
from .runtime import reuse_freed_memory
from ..models import create_model
from . import distributed as D
from .checkpoint import checkpoint_dir, load_training_state, save_training_state
from .config import dump


# ---------------------------------------------------------------------------------------------------------- build
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_model_name(cfg: dict) -> str:
    if cfg["model"]:
        return cfg["model"]
    info = get_dataset_info(cfg["data"])
    if not info.default_model:
        raise SpikeformerError(f"dataset {cfg['data']!r} has no default model; pass --model NAME")
    return info.default_model


def dataset_num_classes(cfg: dict) -> int:
    """The class count of the configured dataset; datasets whose classes are found on disk (``events-folder``)
    count them at ``data_root``."""
    info = get_dataset_info(cfg["data"])
    count = info.extra.get("count_classes")
    if count is None:
        return info.num_classes
    return int(count(cfg.get("data_root"), **(cfg.get("data_kwargs") or {})))


def build_model(cfg: dict) -> nn.Module:
    name = resolve_model_name(cfg)
    kwargs = dict(cfg.get("model_kwargs") or {})
    kwargs.setdefault("num_classes", dataset_num_classes(cfg))
    if cfg.get("T"):
        kwargs["T"] = cfg["T"]
    return create_model(name, numerics=check_numerics(cfg["numerics"]), **kwargs)


def build_data(cfg: dict, model: nn.Module):
    T = cfg.get("T") or getattr(model, "T", None)
    kw = dict(cfg.get("data_kwargs") or {})
    train_kw = {**kw, "augment": cfg["augment"]} if cfg.get("augment") is not None else kw
    train = build_dataset(cfg["data"], "train", root=cfg.get("data_root"), T=T, **train_kw)
    test = build_dataset(cfg["data"], "test", root=cfg.get("data_root"), T=T, **kw)
    return train, test


def _fused_ok(params: list) -> Optional[bool]:
    """PyTorch's fused (one kernel over all tensors) AdamW/Adam/SGD step where every parameter allows it (floating
    point, on CPU or CUDA), else the default. The default on CPU is a loop of about seven tensor operations per
    parameter: QKFormer 10-384's 233 tensors took 33 ms per step that way and 10 ms fused (benchmarks/RESULTS.md).
    The update is the same formula; results differ from the loop's by rounding only."""
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    # timm convention: no weight decay on 1-D parameters (biases, norms, neuron time constants), nor on what the
    # model names in no_weight_decay() (position and time embeddings, ...)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or n in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    name, lr = cfg["optimizer"], cfg["lr"]
    fused = _fused_ok(decay + no_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg["betas"]), fused=fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg["betas"]), fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], nesterov=True, fused=fused)
    from timm.optim import Lamb

    return Lamb(groups, lr=lr, betas=tuple(cfg["betas"]))


def lr_at(step: int, steps_per_epoch: int, cfg: dict) -> float:
    """Learning rate of optimizer step ``step``: linear warmup, then the schedule, then cooldown at min_lr."""
    e = step / steps_per_epoch
    if e < cfg["warmup_epochs"]:
        return cfg["warmup_lr"] + (cfg["lr"] - cfg["warmup_lr"]) * e / cfg["warmup_epochs"]
    if cfg["sched"] == "constant":
        return cfg["lr"]
    if cfg["sched"] == "step":
        return cfg["lr"] * cfg["decay_rate"] ** int(e // cfg["decay_epochs"])
    span = max(cfg["epochs"] - cfg["warmup_epochs"], 1e-9)
    prog = min((e - cfg["warmup_epochs"]) / span, 1.0)
    return cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * prog))


def autocast_ctx(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def time_first(x: torch.Tensor) -> torch.Tensor:
    """DataLoader batches of event frames are ``[B, T, C, H, W]``; models take time first."""
    return x.transpose(0, 1) if x.dim() == 5 else x


class EMA:
    """Exponential moving average of the weights (buffers copied), evaluated alongside the model."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(m, 1.0 - self.decay)
            else:
                e.copy_(m)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, sd):
        self.module.load_state_dict(sd)


def optimizer_step(model: nn.Module, optimizer, scaler, ema, clip_grad) -> None:
    """One optimizer step after the accumulated backward passes: unscale (fp16), clip, step, clear, update the EMA."""
    if scaler:
        scaler.unscale_(optimizer)
    if clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model)


# ------------------------------------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate(model: nn.Module, dataset, cfg: dict, info: D.DistInfo, progress: bool = True) -> dict:
    model.eval()
    order = D.shard_order(len(dataset), cfg["seed"], 0, info, shuffle=False, batch_size=1)
    per_rank = max(cfg["batch_size"] // info.world, 1)
    loader = DataLoader(Subset(dataset, order), batch_size=per_rank, shuffle=False, num_workers=cfg["num_workers"],
                        **D.loader_options(info))
    tot_loss = correct1 = correct5 = n = 0.0
    bar = _bar(loader, "eval", progress and info.is_main)
    for x, y in bar:
        x, y = time_first(D.to_device(x, info)), D.to_device(y, info)
        with autocast_ctx(info.device, cfg["amp"]):
            logits = model(x)
        logits = logits.float()
        tot_loss += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        n += len(y)
    tot_loss, correct1, correct5, n = D.all_reduce_sum([tot_loss, correct1, correct5, n], info)
    if n == 0:
        raise SpikeformerError("the test split is empty; check the dataset directory")
    return {"loss": tot_loss / n, "top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "n": int(n)}


def show_bars(bars: Optional[bool] = None) -> bool:
    """Progress bars redraw their line with carriage returns, which is right on a terminal and a wall of text in a log
    file: by default they are shown only when stderr (where tqdm writes) is a terminal; ``bars`` forces either way
    (``--progress`` / ``--no-progress``)."""
    if bars is not None:
        return bool(bars)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _bar(it, desc, enabled):
    if not enabled or not show_bars(_BARS[0]):
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


_BARS: list = [None]  # the --progress / --no-progress choice of the running command (None: follow the terminal)


# ------------------------------------------------------------------------------------------------------ run dir
def prepare_run_dir(cfg: dict, model_name: str, info: D.DistInfo, resuming: bool) -> Path:
    if cfg["out"]:
        run_dir = Path(cfg["out"])
    else:
        run_dir = Path("runs") / f"{model_name}-{cfg['data']}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not info.is_main:
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise SpikeformerError(f"cannot write to the run directory {run_dir} ({e.strerror}); choose another with --out")
    if not resuming and (run_dir / "checkpoints" / "last.json").exists():
        raise SpikeformerError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick a new --out")
    return run_dir


def check_disk(run_dir: Path, model: nn.Module) -> None:
    # A checkpoint holds weights, optimizer moments (2x) and an EMA copy; keep room for two of them plus logs.
    need = sum(p.numel() * 4 for p in model.parameters()) * 4 * 2 + (64 << 20)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise SpikeformerError(
            f"only {free / 2**20:.0f} MiB free under {run_dir}, checkpoints need about {need / 2**20:.0f} MiB; "
            "free space or choose another --out"
        )


# ---------------------------------------------------------------------------------------------------------- train
def setup_run(cfg: dict, model: nn.Module, model_name: str, info, resume: Optional[str], best_key: str):
    """What every training loop sets up once its model is on its device: the optimizer, the weight EMA, the fp16
    grad scaler, the run directory and the loop state (``best_key`` names the metric kept as best), restored from
    ``checkpoints/last`` when resuming; the main process checks the disk, writes ``config.yaml`` and trims the metrics
    of epochs a resumed run will redo. Returns ``(optimizer, ema, scaler, run_dir, state)``."""
    optimizer = build_optimizer(model, cfg)
    ema = EMA(model, cfg["ema_decay"]) if cfg["ema_decay"] > 0 else None
    scaler = torch.amp.GradScaler(info.device.type) if cfg["amp"] == "fp16" else None
    run_dir = prepare_run_dir(cfg, model_name, info, resuming=resume is not None)
    state = {"epoch": 0, "step": 0, "batch_in_epoch": 0, best_key: -1.0, "best_epoch": -1}
    if resume is not None:
        ck = checkpoint_dir(run_dir, "last")
        if ck is None:
            raise SpikeformerError(f"{run_dir} has no checkpoint to resume from (checkpoints/last.json is missing)")
        state.update(load_training_state(ck, model, optimizer, ema, scaler))
        if ema is not None:
            ema.module.to(info.device)
    if info.is_main:
        check_disk(run_dir, model)
        (run_dir / "config.yaml").write_text(dump({**cfg, "model": model_name}))
        _trim_metrics(run_dir / "metrics.jsonl", state["epoch"])
    return optimizer, ema, scaler, run_dir, state


def train(cfg: dict, resume: Optional[str] = None, progress: bool = True, bars: Optional[bool] = None) -> dict:
    """Train as ``cfg`` says; returns the final test metrics. ``resume`` is a run directory to continue.

    ``progress=False`` prints nothing; otherwise progress bars are drawn on a terminal (``bars=None``) and replaced by
    one line every ``log_every`` steps (long epochs only) and one per epoch in a log file."""
    _BARS[0] = bars
    if cfg.get("task", "classify") == "reconstruct":
        from .reconstruct import train_reconstruct

        return train_reconstruct(cfg, resume, progress)
    if cfg.get("task", "classify") != "classify":
        raise SpikeformerError(f"task must be 'classify' or 'reconstruct'; got {cfg['task']!r}")
    info = D.setup(cfg["device"])
    try:
        result = _train(cfg, resume, progress, info)
    except BaseException:
        D.teardown(clean=False)
        raise
    D.teardown()
    return result


def _train(cfg: dict, resume: Optional[str], progress: bool, info: D.DistInfo) -> dict:
    if cfg["batch_size"] % info.world:
        raise SpikeformerError(f"batch_size {cfg['batch_size']} is the global batch; it must divide by the "
                               f"{info.world} processes")
    seed_everything(cfg["seed"])
    model_name = resolve_model_name(cfg)
    model = build_model(cfg)
    if cfg["reuse_memory"] and info.device.type == "cpu" and not getattr(model, "checkpoint_blocks", False):
        # not with activation checkpointing: whoever asks for it wants the lowest peak, and a heap that is never
        # returned raises the peak where tensors of many sizes alternate (benchmarks/RESULTS.md)
        reuse_freed_memory()
    train_set, test_set = build_data(cfg, model)
    if len(train_set) < cfg["batch_size"]:
        raise SpikeformerError(f"the training split has {len(train_set)} samples, fewer than batch_size "
                               f"{cfg['batch_size']}; lower --batch-size")
    if cfg["sync_bn"] and info.enabled:
        # global-batch statistics on every device with our own BatchNorm mixin: PyTorch's SyncBatchNorm refuses CPU
        # tensors, and its converter turns TokenBN (channel-last tokens [T, B, N, C]) into a BatchNorm over dim 1,
        # which breaks every token model (tests/engine/test_sync_bn.py)
        D.convert_sync_bn(model)
    model.to(info.device)
    optimizer, ema, scaler, run_dir, state = setup_run(cfg, model, model_name, info, resume, "best_top1")
    ddp = D.wrap_ddp(model, info)
    meta = {"model": model_name, "num_classes": getattr(model, "num_classes", None) or dataset_num_classes(cfg),
            "T": getattr(model, "T", None), "data": cfg["data"], "model_kwargs": cfg.get("model_kwargs") or {}}
    writer = _tb_writer(run_dir) if info.is_main else None
    per_rank = cfg["batch_size"] // info.world
    steps_per_epoch = len(train_set) // cfg["batch_size"] // cfg["accum_steps"]
    mixup = _mixup(cfg, meta["num_classes"])
    if info.is_main and progress:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model {model_name} ({n_params / 1e6:.3f}M params, T={getattr(model, 'T', '?')}) on {cfg['data']} "
              f"({len(train_set)} train / {len(test_set)} test), {cfg['epochs']} epochs, run dir {run_dir}",
              flush=True)

    metrics = None
    start_epoch, epochs_run = state["epoch"], 0
    total_epochs = cfg["epochs"] + cfg["cooldown_epochs"]
    for epoch in range(start_epoch, total_epochs):
        ddp.train()
        order = D.shard_order(len(train_set), cfg["seed"], epoch, info, shuffle=True, batch_size=cfg["batch_size"])
        skip = state["batch_in_epoch"] * per_rank * cfg["accum_steps"]
        loader = DataLoader(Subset(train_set, order[skip:]), batch_size=per_rank, shuffle=False,
                            num_workers=cfg["num_workers"], drop_last=True, **D.loader_options(info))
        seen = correct = loss_sum = 0.0
        bar = _bar(loader, f"epoch {epoch + 1}/{total_epochs}", progress and info.is_main)
        for i, (x, y) in enumerate(bar):
            x, y = time_first(D.to_device(x, info)), D.to_device(y, info)
            last_micro = (i + 1) % cfg["accum_steps"] == 0
            lr = lr_at(state["step"], steps_per_epoch, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            target = y
            if mixup is not None and (cfg["mixup_off_epoch"] is None or epoch < cfg["mixup_off_epoch"]):
                x, target = _apply_mixup(mixup, x, y)
            sync = ddp.no_sync() if (info.enabled and not last_micro) else nullcontext()
            with sync:
                with autocast_ctx(info.device, cfg["amp"]):
                    logits = ddp(x)
                logits = logits.float()
                if target.dim() == 2:
                    loss = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
                else:
                    loss = F.cross_entropy(logits, target, label_smoothing=cfg["label_smoothing"])
                if not torch.isfinite(loss):
                    raise SpikeformerError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {state['step']}; training stopped. "
                        f"The last good checkpoint is kept in {run_dir}; lower --set lr=..., or use --set clip_grad=1.0"
                    )
                scaled = loss / cfg["accum_steps"]
                (scaler.scale(scaled) if scaler else scaled).backward()
            if last_micro:
                optimizer_step(model, optimizer, scaler, ema, cfg["clip_grad"])
                state["step"] += 1
                state["batch_in_epoch"] += 1
                if cfg["checkpoint_every"] and state["step"] % cfg["checkpoint_every"] == 0 and info.is_main:
                    save_training_state(run_dir, "last", model, optimizer, {**state, "epoch": epoch}, ema, scaler,
                                        meta)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%", lr=f"{lr:.2e}")
            elif (progress and info.is_main and cfg["log_every"] and steps_per_epoch > cfg["log_every"]
                  and last_micro and state["batch_in_epoch"] % cfg["log_every"] == 0):
                print(f"epoch {epoch + 1}/{total_epochs} step {state['batch_in_epoch']}/{steps_per_epoch}  "
                      f"train loss {loss_sum / seen:.4f} top-1 {100 * correct / seen:.2f}%  lr {lr:.2e}", flush=True)
            if cfg["max_steps"] and state["step"] >= cfg["max_steps"]:
                break
        loss_sum, correct, seen = D.all_reduce_sum([loss_sum, correct, seen], info)
        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
        epochs_run += 1
        out_of_steps = bool(cfg["max_steps"]) and state["step"] >= cfg["max_steps"]
        last_epoch = epoch + 1 == total_epochs or out_of_steps
        if (epoch + 1) % cfg["eval_every"] == 0 or last_epoch:
            eval_model = ema.module if ema is not None else model
            metrics = evaluate(eval_model, test_set, cfg, info, progress)
            row = {"epoch": epoch + 1, "step": state["step"], "lr": lr,
                   "train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(seen, 1),
                   "test_loss": metrics["loss"], "test_top1": metrics["top1"], "test_top5": metrics["top5"]}
            is_best = metrics["top1"] > state["best_top1"]
            if is_best:
                state["best_top1"], state["best_epoch"] = metrics["top1"], epoch + 1
            if info.is_main:
                weights = ema.module if ema is not None else model
                save_training_state(run_dir, "last", model, optimizer, state, ema, scaler, meta)
                if is_best:
                    save_training_state(run_dir, "best", weights, optimizer, state, ema, scaler, meta)
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if writer is not None:
                    for k, v in row.items():
                        if k not in ("epoch", "step"):
                            writer.add_scalar(k, v, epoch + 1)
                    writer.flush()
                if progress:
                    print(f"epoch {epoch + 1}/{total_epochs}  train loss {row['train_loss']:.4f} "
                          f"top-1 {row['train_top1']:.2f}%  |  test loss {metrics['loss']:.4f} "
                          f"top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%", flush=True)
        elif info.is_main:
            save_training_state(run_dir, "last", model, optimizer, state, ema, scaler, meta)
        if out_of_steps:
            break
        if cfg["stop_after"] and epochs_run >= cfg["stop_after"] and not last_epoch:
            if info.is_main and progress:
                print(f"stopped after {epochs_run} epoch(s) as asked (stop_after); continue with --resume {run_dir}")
            break
    if writer is not None:
        writer.close()
    result = {"model": model_name, "data": cfg["data"], "run_dir": str(run_dir), "epoch": state["epoch"],
              "best_top1": state["best_top1"], "best_epoch": state["best_epoch"]}
    if metrics is not None:
        result.update(top1=metrics["top1"], top5=metrics["top5"], loss=metrics["loss"])
    if info.is_main:
        (run_dir / "final.json").write_text(json.dumps(result, indent=1))
    return result


def _trim_metrics(path: Path, epoch: int) -> None:
    """On resume, drop metric rows of epochs after the checkpoint (they will be re-run)."""
    if not path.exists():
        return
    rows = [r for r in path.read_text().splitlines() if r.strip()]
    keep = [r for r in rows if json.loads(r).get("epoch", 0) <= epoch]
    path.write_text("".join(r + "\n" for r in keep))


def _tb_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a declared dependency
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _mixup(cfg: dict, num_classes: int):
    if not (cfg["mixup"] or cfg["cutmix"]):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], label_smoothing=cfg["label_smoothing"],
                 num_classes=num_classes)


def _apply_mixup(mixup, x: torch.Tensor, y: torch.Tensor):
    if x.shape[0] % 2:
        return x, y  # timm's Mixup needs an even batch
    if x.dim() == 5:  # [T, B, C, H, W]: mix whole clips (fold T into channels so CutMix boxes span all steps)
        T, B, C, H, W = x.shape
        xb = x.transpose(0, 1).reshape(B, T * C, H, W).contiguous()
        xb, target = mixup(xb, y)
        return xb.reshape(B, T, C, H, W).transpose(0, 1), target
    return mixup(x.contiguous(), y)
