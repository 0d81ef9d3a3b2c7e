"""Image reconstruction from spike cameras: training (``spikeformer train --task reconstruct``), evaluation, and the
``spikeformer reconstruct FILE.dat`` command.

Training follows SpikeFormer's ``train.py``: the prediction (cropped to the image) is compared with ``2 * image - 1``
by ``100 * Charbonnier + 5 * edge (+ 1 * VGG perceptual with --set recon.vgg_weights=PATH)``
(:mod:`.recon_losses`); evaluation clamps the output to [-1, 1], maps it to uint8 by truncation and scores PSNR and
SSIM per image as scikit-image does (:mod:`spikeformer.analysis.image_metrics`), next to the classical baselines
TFP and TFI on the same windows. Optimizer, schedule, checkpoints, run directory and torchrun are the classification
engine's (:mod:`.train`, :mod:`.checkpoint`, :mod:`.distributed`).

Options of this task live in the config's ``recon`` mapping (``--set recon.KEY=VALUE``), see :data:`RECON_DEFAULTS`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..analysis.image_metrics import psnr, ssim, to_uint8
from ..data import build_dataset, get_dataset_info
from ..data.spikecam import REDS_RATE, tfi, tfp
from ..errors import SpikeformerError, suggest
from ..layers.numerics import check_numerics
from ..models import create_model, get_model_info
from ..models.spikeformer_recon import checkpoint_filter_fn, crop_padding, prepare_spikes, read_official_checkpoint
from . import distributed as D
from .checkpoint import save_training_state
from .recon_losses import EDGE_MODES, ReconLoss
from .train import (_bar, _tb_writer, autocast_ctx, lr_at, optimizer_step, resolve_model_name, seed_everything,
                    setup_run)

RECON_DEFAULTS = {
    "charbonnier": 100.0,  # loss weights of the official train.py
    "edge": 5.0,
    "perceptual": 1.0,  # used only with vgg_weights
    "edge_mode": "official",  # official (x - 9 L(x), the released code) | laplacian (x - L(x))
    "vgg_weights": None,  # VGG19 weights for the perceptual loss (official vgg19-low-level4.pth or torchvision's)
    "report_samples": 6,  # test windows shown in report.html
}


def recon_options(cfg: dict) -> dict:
    """The task's options: :data:`RECON_DEFAULTS` updated by ``cfg['recon']``; unknown keys are errors."""
    given = dict(cfg.get("recon") or {})
    unknown = [k for k in given if k not in RECON_DEFAULTS]
    if unknown:
        raise SpikeformerError(f"unknown option recon.{unknown[0]}.{suggest(unknown[0], RECON_DEFAULTS)} "
                               f"Options: {', '.join(RECON_DEFAULTS)}")
    opts = {**RECON_DEFAULTS, **given}
    if opts["edge_mode"] not in EDGE_MODES:
        raise SpikeformerError(f"recon.edge_mode must be one of {', '.join(EDGE_MODES)}; got {opts['edge_mode']!r}")
    return opts


# ---------------------------------------------------------------------------------------------------------- build
def build_recon_model(cfg: dict) -> tuple[str, nn.Module]:
    name = resolve_model_name(cfg)
    if get_model_info(name).task != "reconstruct":
        raise SpikeformerError(f"{name} is a classifier; --task reconstruct needs a reconstruction model "
                               "(spikeformer_recon, spikeformer_recon_digits)")
    kwargs = dict(cfg.get("model_kwargs") or {})
    if cfg.get("T"):
        kwargs["T"] = cfg["T"]
    return name, create_model(name, numerics=check_numerics(cfg["numerics"]), **kwargs)


def build_recon_data(cfg: dict, model: nn.Module):
    if get_dataset_info(cfg["data"]).kind != "spikecam":
        raise SpikeformerError(f"--task reconstruct needs spike-camera data (spikecam-digits, spike-reds), not "
                               f"{cfg['data']!r}")
    kw = dict(cfg.get("data_kwargs") or {})
    return tuple(build_dataset(cfg["data"], split, root=cfg.get("data_root"), T=model.T, **kw)
                 for split in ("train", "test"))


def _loader(dataset, cfg: dict, info: D.DistInfo, order: list[int], drop_last: bool) -> DataLoader:
    return DataLoader(Subset(dataset, order), batch_size=max(cfg["batch_size"] // info.world, 1), shuffle=False,
                      num_workers=cfg["num_workers"], drop_last=drop_last, **D.loader_options(info))


def _gt_uint8(img: torch.Tensor) -> torch.Tensor:
    # ground truth in [0, 1] came from 8-bit images (or is exact): rounding recovers their pixels, where truncating
    # k / 255 * 255 could give k - 1
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate_reconstruction(model: Optional[nn.Module], dataset, cfg: dict, info: Optional[D.DistInfo] = None,
                            progress: bool = False, method: str = "model") -> dict:
    """Mean PSNR (dB) and SSIM over ``dataset`` of ``method``: ``"model"`` (``model.reconstruct``), ``"tfp"`` or
    ``"tfi"`` (the dataset's ``rate``); images scored in uint8, as the official evaluation."""
    info = info or D.DistInfo()
    rate = getattr(dataset, "rate", REDS_RATE)
    if model is not None:
        model.eval()
    order = D.shard_order(len(dataset), cfg["seed"], 0, info, shuffle=False, batch_size=1)
    sums = [0.0, 0.0, 0.0]
    for spikes, img in _bar(_loader(dataset, cfg, info, order, False), f"eval {method}", progress and info.is_main):
        spikes, img = D.to_device(spikes, info), D.to_device(img, info)
        if method == "model":
            with autocast_ctx(info.device, cfg["amp"]):
                pred = model.reconstruct(spikes)
        elif method == "tfp":
            pred = tfp(spikes, rate).unsqueeze(1)
        elif method == "tfi":
            pred = tfi(spikes, rate).unsqueeze(1)
        else:
            raise SpikeformerError(f"method must be model, tfp or tfi; got {method!r}")
        p, t = to_uint8(pred.float()), _gt_uint8(img)
        sums[0] += psnr(p, t).sum().item()
        sums[1] += ssim(p, t).sum().item()
        sums[2] += p.shape[0] * p.shape[1]
    tot_p, tot_s, n = D.all_reduce_sum(sums, info)
    if n == 0:
        raise SpikeformerError("the test split is empty; check the dataset directory")
    return {"psnr": tot_p / n, "ssim": tot_s / n, "n": int(n)}


def baselines(dataset, cfg: dict, info: Optional[D.DistInfo] = None, progress: bool = False) -> dict:
    """``tfp_psnr``, ``tfp_ssim``, ``tfi_psnr``, ``tfi_ssim`` of ``dataset``."""
    out = {}
    for m in ("tfp", "tfi"):
        r = evaluate_reconstruction(None, dataset, cfg, info, progress, method=m)
        out[f"{m}_psnr"], out[f"{m}_ssim"] = r["psnr"], r["ssim"]
    return out


# ---------------------------------------------------------------------------------------------------------- train
def train_reconstruct(cfg: dict, resume: Optional[str] = None, progress: bool = True) -> dict:
    """Train a reconstruction model as ``cfg`` says (``task: reconstruct``); returns the final test metrics
    (``psnr``, ``ssim``, the baselines', ``run_dir``). ``resume`` is a run directory to continue."""
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
    opts = recon_options(cfg)
    seed_everything(cfg["seed"])
    model_name, model = build_recon_model(cfg)
    train_set, test_set = build_recon_data(cfg, model)
    if len(train_set) < cfg["batch_size"]:
        raise SpikeformerError(f"the training split has {len(train_set)} samples, fewer than batch_size "
                               f"{cfg['batch_size']}; lower --batch-size")
    model.to(info.device)
    criterion = ReconLoss(opts["charbonnier"], opts["edge"], opts["perceptual"], opts["edge_mode"],
                          opts["vgg_weights"]).to(info.device)
    optimizer, ema, scaler, run_dir, state = setup_run(cfg, model, model_name, info, resume, "best_psnr")
    ddp = D.wrap_ddp(model, info)
    meta = {"model": model_name, "num_classes": model.out_chans, "T": model.T, "data": cfg["data"],
            "model_kwargs": cfg.get("model_kwargs") or {}, "task": "reconstruct"}
    writer = _tb_writer(run_dir) if info.is_main else None
    steps_per_epoch = len(train_set) // cfg["batch_size"] // cfg["accum_steps"]
    if info.is_main and progress:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model {model_name} ({n_params / 1e6:.3f}M params, window T={model.T}) on {cfg['data']} "
              f"({len(train_set)} train / {len(test_set)} test windows), {cfg['epochs']} epochs, run dir {run_dir}",
              flush=True)
    base = baselines(test_set, cfg, info, progress)
    if info.is_main and progress:
        print(f"baselines on the test split: TFP {base['tfp_psnr']:.2f} dB / {base['tfp_ssim']:.4f}, "
              f"TFI {base['tfi_psnr']:.2f} dB / {base['tfi_ssim']:.4f}", flush=True)

    metrics, lr = None, cfg["lr"]
    start_epoch, epochs_run = state["epoch"], 0
    total_epochs = cfg["epochs"] + cfg["cooldown_epochs"]
    for epoch in range(start_epoch, total_epochs):
        ddp.train()
        order = D.shard_order(len(train_set), cfg["seed"], epoch, info, shuffle=True, batch_size=cfg["batch_size"])
        skip = state["batch_in_epoch"] * (cfg["batch_size"] // info.world) * cfg["accum_steps"]
        seen = loss_sum = 0.0
        bar = _bar(_loader(train_set, cfg, info, order[skip:], True), f"epoch {epoch + 1}/{total_epochs}",
                   progress and info.is_main)
        for i, (spikes, img) in enumerate(bar):
            spikes, img = D.to_device(spikes, info), D.to_device(img, info)
            last_micro = (i + 1) % cfg["accum_steps"] == 0
            lr = lr_at(state["step"], steps_per_epoch, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, pad = prepare_spikes(spikes)
            sync = ddp.no_sync() if (info.enabled and not last_micro) else nullcontext()
            with sync:
                with autocast_ctx(info.device, cfg["amp"]):
                    pred = crop_padding(ddp(x), pad)
                loss, _ = criterion(pred.float(), img * 2 - 1)
                if not torch.isfinite(loss):
                    raise SpikeformerError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {state['step']}; training stopped. "
                        f"The last good checkpoint is kept in {run_dir}; lower --set lr=..., or use "
                        "--set clip_grad=1.0")
                scaled = loss / cfg["accum_steps"]
                (scaler.scale(scaled) if scaler else scaled).backward()
            if last_micro:
                optimizer_step(model, optimizer, scaler, ema, cfg["clip_grad"])
                state["step"] += 1
                state["batch_in_epoch"] += 1
                if cfg["checkpoint_every"] and state["step"] % cfg["checkpoint_every"] == 0 and info.is_main:
                    save_training_state(run_dir, "last", model, optimizer, {**state, "epoch": epoch}, ema, scaler,
                                        meta)
            seen += len(img)
            loss_sum += loss.item() * len(img)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2e}")
            elif (progress and info.is_main and cfg["log_every"] and steps_per_epoch > cfg["log_every"]
                  and last_micro and state["batch_in_epoch"] % cfg["log_every"] == 0):
                print(f"epoch {epoch + 1}/{total_epochs} step {state['batch_in_epoch']}/{steps_per_epoch}  "
                      f"train loss {loss_sum / seen:.4f}  lr {lr:.2e}", flush=True)
            if cfg["max_steps"] and state["step"] >= cfg["max_steps"]:
                break
        loss_sum, seen = D.all_reduce_sum([loss_sum, seen], info)
        state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
        epochs_run += 1
        out_of_steps = bool(cfg["max_steps"]) and state["step"] >= cfg["max_steps"]
        last_epoch = epoch + 1 == total_epochs or out_of_steps
        if (epoch + 1) % cfg["eval_every"] == 0 or last_epoch:
            eval_model = ema.module if ema is not None else model
            metrics = evaluate_reconstruction(eval_model, test_set, cfg, info, progress)
            row = {"epoch": epoch + 1, "step": state["step"], "lr": lr, "train_loss": loss_sum / max(seen, 1),
                   "test_psnr": metrics["psnr"], "test_ssim": metrics["ssim"]}
            is_best = metrics["psnr"] > state["best_psnr"]
            if is_best:
                state["best_psnr"], state["best_epoch"] = metrics["psnr"], epoch + 1
            if info.is_main:
                save_training_state(run_dir, "last", model, optimizer, state, ema, scaler, meta)
                if is_best:
                    save_training_state(run_dir, "best", eval_model, optimizer, state, ema, scaler, meta)
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if writer is not None:
                    for k, v in row.items():
                        if k not in ("epoch", "step"):
                            writer.add_scalar(k, v, epoch + 1)
                    writer.flush()
                if progress:
                    print(f"epoch {epoch + 1}/{total_epochs}  train loss {row['train_loss']:.4f}  |  test PSNR "
                          f"{metrics['psnr']:.2f} dB SSIM {metrics['ssim']:.4f}", flush=True)
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
    result = {"task": "reconstruct", "model": model_name, "data": cfg["data"], "run_dir": str(run_dir),
              "epoch": state["epoch"], "best_psnr": state["best_psnr"], "best_epoch": state["best_epoch"], **base}
    if metrics is not None:
        result.update(psnr=metrics["psnr"], ssim=metrics["ssim"], n=metrics["n"])
    if info.is_main:
        (run_dir / "final.json").write_text(json.dumps(result, indent=1))
        if cfg.get("report"):
            from ..analysis.recon_report import write_recon_report

            result["report"] = str(write_recon_report(run_dir, int(opts["report_samples"])))
            if progress:
                print(f"report: {result['report']}", flush=True)
    return result


# ------------------------------------------------------------------------------------------- checkpoints, files
def load_recon_model(checkpoint: str, model: Optional[str] = None, numerics: str = "fast") -> nn.Module:
    """A reconstruction model with weights from ``checkpoint``: a run directory, one of our ``.safetensors``
    files (it records its model), or an official ``.pth`` (``model`` default ``spikeformer_recon``)."""
    from ..convert.checkpoint import read_metadata

    p = Path(checkpoint)
    if p.is_dir():
        p = next((p / n for n in ("best.safetensors", "last.safetensors") if (p / n).is_file()), p / "best.safetensors")
    if not p.is_file():
        raise SpikeformerError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        meta = read_metadata(p)
        name = model or meta.get("model")
        if not name:
            raise SpikeformerError(f"{p} does not say which model it holds; pass --model NAME")
        kwargs = dict(meta.get("model_kwargs") or {})
        if meta.get("T"):
            kwargs["T"] = int(meta["T"])
        net = create_model(name, checkpoint_path=str(p), numerics=numerics, **kwargs)
    else:
        name = model or "spikeformer_recon"
        sd = checkpoint_filter_fn(read_official_checkpoint(p))
        stem = sd.get("stem.weight")
        # the window length is the stem's input channels (official scripts trained 65, their constructor says 64)
        net = create_model(name, numerics=numerics, **({"T": stem.shape[1]} if stem is not None else {}))
        own = net.state_dict()
        bad = sorted(set(own) ^ set(sd)) + [k for k in own if k in sd and own[k].shape != sd[k].shape]
        if bad:
            raise SpikeformerError(f"{p} does not fit {name}: {len(bad)} key(s) differ, first {bad[0]!r}. Is it a "
                                   "checkpoint of another configuration (window length, widths)? Pass --model")
        net.load_state_dict(sd, strict=True)
    if getattr(net, "task", None) != "reconstruct":
        raise SpikeformerError(f"{name} is not a reconstruction model")
    return net.eval()


def evaluate_recon_checkpoint(path: str, data: Optional[str] = None, model: Optional[str] = None,
                              sets: Optional[dict] = None, progress: bool = True) -> dict:
    """PSNR and SSIM of a checkpoint (with the TFP and TFI baselines) on ``data``'s test split (default: the data
    it was trained on); what ``spikeformer eval`` runs for a reconstruction checkpoint."""
    import copy

    from ..convert.checkpoint import read_metadata
    from .config import DEFAULTS, load_config_file, merge

    p = Path(path)
    run = p if p.is_dir() else p.parent
    run_cfg = load_config_file(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    cfg = copy.deepcopy(DEFAULTS)
    merge(cfg, {k: v for k, v in run_cfg.items() if k in DEFAULTS}, str(run / "config.yaml"))
    merge(cfg, sets or {}, "--set")
    net = load_recon_model(path, model, cfg["numerics"])
    meta = read_metadata(p) if p.suffix == ".safetensors" else {}
    cfg["data"] = data or meta.get("data") or run_cfg.get("data") or get_model_info(net.model_name).dataset
    info = D.setup(cfg["device"])
    try:
        net.to(info.device)
        _, test = build_recon_data(cfg, net)
        out = evaluate_reconstruction(net, test, cfg, info, progress)
        out.update(baselines(test, cfg, info))
    except BaseException:
        D.teardown(clean=False)
        raise
    D.teardown()
    out.update(model=net.model_name, data=cfg["data"], checkpoint=str(path))
    return out


def window_centres(frames: int, window: int, stride: int) -> range:
    """Key frames of the windows ``[c - window // 2, c - window // 2 + window)`` that fit in ``frames`` frames,
    ``stride`` apart, from the first that fits (SpikeFormer's ``recon_real_data.py``: 32, 64, ... for 65 frames)."""
    r = window // 2
    return range(r, frames - (window - r) + 1, stride)


def save_png(img: torch.Tensor, path: Path) -> None:
    """A uint8 ``[H, W]`` image as a PNG file, written atomically."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(img.cpu().numpy()).save(tmp, format="PNG")
    tmp.replace(path)


@torch.no_grad()
def reconstruct_file(path: str, out: str, checkpoint: Optional[str] = None, model: Optional[str] = None,
                     method: str = "model", height: int = 250, width: int = 400, window: Optional[int] = None,
                     stride: Optional[int] = None, rate: float = REDS_RATE, batch_size: int = 4,
                     numerics: str = "fast", progress: bool = True) -> list[Path]:
    """Reconstruct images from the spike-camera file ``path`` into ``out/frame_<key frame>.png``: with a model
    (``checkpoint``), or with the TFP / TFI baselines. Windows are ``window`` frames (the model's T; 65 for the
    baselines) every ``stride`` frames (default half a window)."""
    from ..data.spikecam import count_spike_frames, read_spike_camera

    if method not in ("model", "tfp", "tfi"):
        raise SpikeformerError(f"--method must be model, tfp or tfi; got {method!r}")
    net = None
    if method == "model":
        if not checkpoint:
            raise SpikeformerError("reconstructing with the model needs --checkpoint (or use --method tfp / tfi)")
        net = load_recon_model(checkpoint, model, numerics)
        if window and window != net.T:
            raise SpikeformerError(f"the model takes windows of {net.T} frames, not {window}")
        window = net.T
    window = window or 65
    stride = stride or max(window // 2, 1)
    n = count_spike_frames(path, height, width)
    centres = list(window_centres(n, window, stride))
    if not centres:
        raise SpikeformerError(f"{path} holds {n} frames, fewer than one window of {window}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    r = window // 2
    batches = [centres[i: i + batch_size] for i in range(0, len(centres), batch_size)]
    for batch in _bar(batches, "reconstruct", progress):
        first = batch[0] - r
        frames = torch.from_numpy(read_spike_camera(path, height, width, first, batch[-1] - r + window - first))
        spikes = torch.stack([frames[c - r - first: c - r - first + window] for c in batch])
        if net is not None:
            img = net.reconstruct(spikes)[:, 0]
        else:
            img = (tfp if method == "tfp" else tfi)(spikes, rate)
        for c, im in zip(batch, to_uint8(img)):
            dest = out_dir / f"frame_{c:06d}.png"
            save_png(im, dest)
            written.append(dest)
    return written


def cmd_reconstruct(args) -> int:
    files = reconstruct_file(args.file, args.out, args.checkpoint, args.model, args.method, args.height, args.width,
                             args.window, args.stride, args.rate, args.batch_size, args.numerics,
                             progress=not args.quiet)
    print(f"wrote {len(files)} image(s) to {args.out}")
    return 0


def add_parser(subparsers) -> None:
    """Add ``spikeformer reconstruct`` to the CLI's subparsers."""
    r = subparsers.add_parser("reconstruct", help="images from a spike-camera .dat file (a trained model, or the "
                              "TFP / TFI baselines), one PNG per window")
    r.add_argument("file", metavar="FILE.dat", help="spike-camera recording (bit-packed frames)")
    r.add_argument("--checkpoint", help="our .safetensors / run directory, or an official SpikeFormer .pth")
    r.add_argument("--out", required=True, help="directory for the PNG files (frame_<key frame>.png)")
    r.add_argument("--model", help="model name, for official checkpoints (default spikeformer_recon)")
    r.add_argument("--method", default="model", choices=["model", "tfp", "tfi"],
                   help="model (default) or a classical baseline")
    r.add_argument("--height", type=int, default=250, help="frame height of the recording (default 250)")
    r.add_argument("--width", type=int, default=400, help="frame width of the recording (default 400)")
    r.add_argument("--window", type=int, help="frames per window (default: the model's; 65 for the baselines)")
    r.add_argument("--stride", type=int, help="frames between key frames (default: half a window)")
    r.add_argument("--rate", type=float, default=REDS_RATE,
                   help=f"spikes per frame of a white pixel, for TFP/TFI (default {REDS_RATE})")
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--numerics", default="fast", choices=["fast", "exact"])
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_reconstruct)
