"""Spike cameras (Vidar): their ``.dat`` files, a simulator of the camera, its classical inverses, two datasets.

A spike-camera pixel integrates the light that falls on it; when the integral crosses a threshold the pixel fires
(a 1 in that frame) and the threshold is subtracted. The camera reads every pixel at a fixed clock (about 40 kHz)
and writes one binary frame per tick.

* ``.dat`` files: :func:`read_spike_camera` / :func:`write_spike_camera`. One frame is ``H*W/8`` bytes; bit ``b``
  (least significant first) of byte ``k`` is pixel ``8k+b`` in row-major order, and the frame is stored upside down,
  so readers flip it vertically (Spk2ImgNet's ``raw_to_spike``, spikezoo's ``load_vidar_dat``, the SpikeFormer
  code's ``load_spike_raw``). Default size 250x400, the resolution of the Vidar cameras and of Spike-REDS.
* :func:`simulate_spike_camera`: the integrate-and-fire camera model with shot noise; the firing rate of a pixel is
  ``rate * intensity`` per frame.
* :func:`tfp` and :func:`tfi`: the classical reconstructions "texture from playback" (the spike count over a window)
  and "texture from inter-spike interval" (one over the interval around the key frame), divided by the camera's
  rate as spikezoo scores them.
* Datasets (``build_dataset``): ``spikecam-digits``, the embedded default (moving scikit-learn digits seen by the
  simulated camera, nothing downloaded), and ``spike-reds``, the REDS-based layout of Spk2ImgNet and spikezoo
  (``ROOT/{train,test}/{spike|input}/NAME.dat`` with ``ROOT/{train,test}/gt/NAME.png``).

Every item is ``(spikes, image)``: ``spikes`` uint8 ``[window, H, W]`` of 0/1 centred on the key frame, ``image``
float32 ``[1, H, W]`` in [0, 1], the scene at the key frame.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import SpikeformerError
from .registry import register_dataset

HEIGHT, WIDTH = 250, 400
GT_SUFFIXES = (".png", ".jpg", ".jpeg")
REDS_RATE = 0.6  # Spike-REDS was simulated at 0.6 spikes per frame for a white pixel (Spk2ImgNet, spikezoo)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------------------------- files
def _frame_bytes(height: int, width: int) -> int:
    if height < 1 or width < 1 or (height * width) % 8:
        raise SpikeformerError(f"a spike-camera frame of {height}x{width} pixels is not a whole number of bytes "
                               "(height*width must divide by 8); check height and width")
    return height * width // 8


def count_spike_frames(path: PathLike, height: int = HEIGHT, width: int = WIDTH) -> int:
    """How many ``height`` x ``width`` frames the ``.dat`` file ``path`` holds (its size is checked, not its bits)."""
    p = Path(path)
    if not p.is_file():
        raise SpikeformerError(f"spike-camera file not found: {p}")
    per = _frame_bytes(height, width)
    size = p.stat().st_size
    if size == 0 or size % per:
        whole = size // per
        raise SpikeformerError(
            f"{p}: {size} bytes is not a whole number of {height}x{width} spike frames ({per} bytes each; "
            f"{whole} whole frame(s) and {size - whole * per} bytes left over). The file is truncated, or it was "
            "recorded at another resolution: give its height and width (--height/--width)")
    return size // per


def read_spike_camera(path: PathLike, height: int = HEIGHT, width: int = WIDTH, start: int = 0,
                      count: Optional[int] = None) -> np.ndarray:
    """Frames ``start .. start+count`` (all by default) of a spike-camera ``.dat`` file: uint8 ``[frames, H, W]``
    of 0/1, in the field's standard orientation (row 0 at the top)."""
    n = count_spike_frames(path, height, width)
    per = _frame_bytes(height, width)
    if count is None:
        count = n - start
    if start < 0 or count < 0 or start + count > n:
        raise SpikeformerError(f"{path}: frames {start}..{start + count} asked, the file holds {n}")
    with open(path, "rb") as f:
        f.seek(start * per)
        raw = np.frombuffer(f.read(count * per), dtype=np.uint8)
    if raw.size != count * per:  # the file shrank while we read it
        raise SpikeformerError(f"{path}: could read only {raw.size} of {count * per} bytes; is it still being written?")
    bits = np.unpackbits(raw, bitorder="little").reshape(count, height, width)
    return np.ascontiguousarray(bits[:, ::-1])


def write_spike_camera(path: PathLike, spikes) -> Path:
    """Write ``spikes`` (``[frames, H, W]`` of 0/1, numpy or torch) as a spike-camera ``.dat`` file, atomically."""
    a = spikes.detach().cpu().numpy() if isinstance(spikes, torch.Tensor) else np.asarray(spikes)
    if a.ndim != 3:
        raise SpikeformerError(f"spikes must be [frames, height, width]; got shape {tuple(a.shape)}")
    _frame_bytes(a.shape[1], a.shape[2])
    if a.size and not np.isin(a, (0, 1)).all():
        raise SpikeformerError("spikes must hold only 0 and 1 (a spike camera writes one bit per pixel and frame)")
    packed = np.packbits(a[:, ::-1].astype(np.uint8).reshape(a.shape[0], -1), axis=1, bitorder="little")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(packed.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


# --------------------------------------------------------------------------------------------------- the camera
def simulate_spike_camera(intensity: torch.Tensor, rate: float = REDS_RATE, noise: float = 0.1, dark: float = 0.0,
                          threshold: float = 1.0, random_phase: bool = True,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Spike frames (uint8 0/1, same shape) seen by a spike camera looking at ``intensity`` ``[frames, ...]`` in
    [0, 1].

    Each frame a pixel's integrator gains ``rate * intensity + dark`` (in units of the threshold) plus shot noise,
    a Gaussian of standard deviation ``noise * sqrt(gain)``; it fires when the integral reaches ``threshold`` and
    the threshold is subtracted (reset by subtraction, no charge lost). The mean gain is ``rate * intensity`` per
    frame, and the integral is bounded, so over many frames a pixel fires ``rate * intensity`` times per frame (with
    ``dark=0``) whatever the noise. ``random_phase`` starts every integrator at a uniform random charge, as in a
    camera that has been running before the window starts.
    """
    if intensity.dim() < 1:
        raise SpikeformerError("intensity must have a frame dimension first: [frames, ...]")
    x = intensity.float()
    acc = (torch.rand(x.shape[1:], generator=generator, device=x.device) * threshold if random_phase
           else torch.zeros(x.shape[1:], device=x.device))
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    for t in range(x.shape[0]):
        gain = x[t].clamp(min=0) * rate + dark
        if noise > 0:
            gain = gain + noise * gain.sqrt() * torch.randn(gain.shape, generator=generator, device=x.device)
        acc = acc + gain
        fire = acc >= threshold
        acc = acc - fire * threshold
        out[t] = fire
    return out


def tfp(spikes: torch.Tensor, rate: float = REDS_RATE, window: Optional[int] = None) -> torch.Tensor:
    """Texture from playback: the mean of the ``window`` frames centred on the key frame (``frames // 2``) over dim
    -3 of ``spikes`` ``[..., frames, H, W]``, divided by ``rate`` and clipped to [0, 1]."""
    s = spikes.float()
    n = s.shape[-3]
    if window is not None and window < n:
        mid = n // 2
        s = s[..., mid - window // 2: mid - window // 2 + window, :, :]
    return (s.mean(-3) / rate).clamp(0, 1)


def tfi(spikes: torch.Tensor, rate: float = REDS_RATE) -> torch.Tensor:
    """Texture from inter-spike interval: ``1 / (rate * interval)`` clipped to [0, 1], where the interval runs from
    the last spike at or before the key frame (``frames // 2``) to the first spike after it, over dim -3 of
    ``spikes`` ``[..., frames, H, W]``. Where either spike is missing from the window the interval is taken as the
    window's span (``frames - 1``), i.e. less than one spike per window, as spikezoo's TFI does (it searches half a
    window on each side; this searches the whole window)."""
    s = spikes.bool()
    n = s.shape[-3]
    mid = n // 2
    idx = torch.arange(n, device=s.device).view(n, 1, 1)
    before = torch.where(s[..., : mid + 1, :, :], idx[: mid + 1], -1).amax(-3)
    after = torch.where(s[..., mid + 1:, :, :], idx[mid + 1:], n).amin(-3)
    found = (before >= 0) & (after < n)
    interval = torch.where(found, after - before, max(n - 1, 1)).float()
    return (1.0 / (rate * interval)).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ moving digits
def moving_digit_scenes(digits: torch.Tensor, frames: int, size: int = 32, digit_size: int = 20,
                        max_speed: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Intensity videos ``[N, frames, size, size]`` in [0, 1]: each 8x8 digit of ``digits`` ``[N, 8, 8]`` (values in
    [0, 1]), drawn ``digit_size`` pixels wide with bilinear interpolation, moves in a straight line at up to
    ``max_speed`` pixels per frame over a static background (a random level plus a linear gradient). The digit's
    brightness and the background's are drawn per scene; the key frame (``frames // 2``) has the digit near the
    centre of the canvas."""
    n = digits.shape[0]
    g = generator
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    level = 0.05 + 0.25 * u(n)
    slope = 0.15 * u(n)
    angle = 2 * torch.pi * u(n)
    fg = 0.6 + 0.4 * u(n)
    speed = max_speed * u(n).sqrt()  # uniform over the disc of speeds
    heading = 2 * torch.pi * u(n)
    centre = size / 2 + (u(n, 2) - 0.5) * (size - digit_size) * 0.5

    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    ramp = (xx[None] - size / 2) * torch.cos(angle)[:, None, None] + (yy[None] - size / 2) * torch.sin(angle)[:, None,
                                                                                                               None]
    background = (level[:, None, None] + slope[:, None, None] * ramp / size).clamp(0, 1)

    t = torch.arange(frames, dtype=torch.float32) - frames // 2
    vx, vy = speed * torch.cos(heading), speed * torch.sin(heading)
    cx = centre[:, 0:1] + vx[:, None] * t  # [N, frames]
    cy = centre[:, 1:2] + vy[:, None] * t
    scale = digit_size / 8.0
    # canvas pixel centre -> digit pixel coordinate -> grid_sample's [-1, 1] (align_corners=False)
    gx = ((coords - (cx[..., None] - digit_size / 2)) / scale / 4.0 - 1.0)[:, :, None, :]  # [N, frames, 1, size]
    gy = ((coords - (cy[..., None] - digit_size / 2)) / scale / 4.0 - 1.0)[:, :, :, None]  # [N, frames, size, 1]
    grid = torch.stack(torch.broadcast_tensors(gx, gy), -1).reshape(n * frames, size, size, 2)
    src = digits.float().unsqueeze(1).repeat_interleave(frames, 0)
    alpha = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = alpha.reshape(n, frames, size, size).clamp(0, 1)
    return background[:, None] * (1 - alpha) + fg[:, None, None, None] * alpha


class SpikeWindows(Dataset):
    """Windows of spike frames with the image at their key frame (in memory): ``(spikes uint8 [window, H, W],
    image float32 [1, H, W])``. ``rate`` is the camera's spikes per frame for a white pixel (what TFP divides by)."""

    def __init__(self, spikes: torch.Tensor, images: torch.Tensor, rate: float, names: Optional[list] = None):
        self.spikes, self.images, self.rate = spikes, images, rate
        self.names = names

    def __len__(self) -> int:
        return self.spikes.shape[0]

    def __getitem__(self, i: int):
        return self.spikes[i], self.images[i]


@register_dataset("spikecam-digits", num_classes=1, input_size=(1, 32, 32), kind="spikecam", needs_root=False,
                  description="scikit-learn digits moving before a simulated spike camera, 32x32, 33-frame windows, "
                              "embedded (no download)",
                  default_model="spikeformer_recon_digits")
def build_spikecam_digits(split: str, root=None, T=None, window: Optional[int] = None, size: int = 32,
                          digit_size: int = 20, max_speed: float = 0.5, rate: float = REDS_RATE, noise: float = 0.1,
                          scenes_per_digit: int = 1, limit: Optional[int] = None) -> SpikeWindows:
    """Moving digits seen by :func:`simulate_spike_camera`: the digits of the fixed split of ``digits`` (1,437 train,
    360 test), ``scenes_per_digit`` scenes each (default 1), ``window`` frames (default the
    model's ``T``, else 33), seeded per split so every run sees the same data; ``limit`` keeps the first digits of
    the split only (quick experiments)."""
    from .digits import digits_arrays

    window = int(window or T or 33)
    if window < 2:
        raise SpikeformerError(f"window must be at least 2 frames, not {window}")
    if size % 8:
        raise SpikeformerError(f"size must be a multiple of 8 (the reconstruction model's strides), not {size}")
    per = int(scenes_per_digit)
    images, _ = digits_arrays(split)
    images = images[:limit] if limit else images
    digits = torch.from_numpy(images).repeat(per, 1, 1)
    g = torch.Generator().manual_seed(20_221_012 + (0 if split == "train" else 1))
    spikes, gts = [], []
    threads = torch.get_num_threads()
    # element-wise work on small frames: worker threads cost more than they give, many times more on a busy machine
    torch.set_num_threads(1)
    try:
        for chunk in digits.split(256):
            video = moving_digit_scenes(chunk, window, size, digit_size, max_speed, generator=g)
            spikes.append(simulate_spike_camera(video.transpose(0, 1).contiguous(), rate=rate, noise=noise,
                                                generator=g).transpose(0, 1))
            gts.append(video[:, window // 2: window // 2 + 1])
    finally:
        torch.set_num_threads(threads)
    return SpikeWindows(torch.cat(spikes).contiguous(), torch.cat(gts).contiguous(), rate)


# ------------------------------------------------------------------------------------------------------ Spike-REDS
def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except OSError as e:
        raise SpikeformerError(f"{path}: not a readable image ({e})") from None


class SpikeFolder(Dataset):
    """Spike ``.dat`` files paired with ground-truth images of the same name: the window of ``window`` frames
    centred on the middle of each file (as spikezoo's ``get_spike`` and the SpikeFormer loader centre theirs), and the
    image (grey, [0, 1]). Every file's size is checked when the dataset is built, so a truncated or short file is
    reported before training starts."""

    def __init__(self, pairs: list[tuple[Path, Path]], window: int, height: int, width: int, rate: float):
        self.pairs, self.window, self.height, self.width, self.rate = pairs, window, height, width, rate
        self.names = [d.stem for d, _ in pairs]
        self.frames = [count_spike_frames(d, height, width) for d, _ in pairs]
        short = [(d, n) for (d, _), n in zip(pairs, self.frames) if n < window]
        if short:
            d, n = short[0]
            raise SpikeformerError(f"{d} holds {n} frames, fewer than the window of {window} ({len(short)} file(s) "
                                   f"too short); use a model with T <= {n} (--set T={n}) or --set "
                                   f"data_kwargs.window={n}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        dat, img = self.pairs[i]
        start = self.frames[i] // 2 - self.window // 2
        spikes = torch.from_numpy(read_spike_camera(dat, self.height, self.width, start, self.window))
        gt = _read_gray(img)
        if gt.shape != (self.height, self.width):
            raise SpikeformerError(f"{img} is {gt.shape[0]}x{gt.shape[1]}, its spikes are {self.height}x{self.width}")
        return spikes, torch.from_numpy(gt.astype(np.float32) / 255.0)[None]


@register_dataset("spike-reds", num_classes=1, input_size=(1, HEIGHT, WIDTH), kind="spikecam",
                  description="REDS-based spike-camera dataset (Spk2ImgNet / spikezoo layout: {train,test}/spike/*.dat "
                              "+ {train,test}/gt/*.png)",
                  default_model="spikeformer_recon")
def build_spike_reds(split: str, root=None, T=None, window: Optional[int] = None, height: int = HEIGHT,
                     width: int = WIDTH, rate: float = REDS_RATE) -> SpikeFolder:
    """``ROOT/<split>/spike/*.dat`` (spikezoo's ``REDS_BASE``) or ``ROOT/<split>/input/*.dat`` (Spk2ImgNet's
    folders, which ship train and test as two directories: link them as ``ROOT/train`` and ``ROOT/test``), each
    with ``ROOT/<split>/gt/<same name>.png`` (or ``.jpg``), read as grey. The window (default the model's ``T``) is
    centred on each file's middle frame, as spikezoo cuts its windows and the SpikeFormer code centres its 65
    frames on the middle ground-truth frame; a file shorter than the window is an error when the dataset is built."""
    base = Path(root) / split
    spike_dir = next((base / d for d in ("spike", "input") if (base / d).is_dir()), None)
    if spike_dir is None:
        raise SpikeformerError(f"{base} has no spike/ (or input/) folder of .dat files; the layout is "
                               "ROOT/{train,test}/spike/NAME.dat with ROOT/{train,test}/gt/NAME.png")
    dats = sorted(spike_dir.glob("*.dat"))
    if not dats:
        raise SpikeformerError(f"{spike_dir} holds no .dat files")
    pairs, missing = [], []
    for d in dats:
        img = next((p for p in (base / "gt" / f"{d.stem}{ext}" for ext in GT_SUFFIXES) if p.is_file()), None)
        (pairs.append((d, img)) if img is not None else missing.append(f"{d.stem}.png"))
    if missing:
        raise SpikeformerError(f"{len(missing)} spike file(s) in {spike_dir} have no ground truth in {base / 'gt'} "
                               f"(first: {missing[0]}); every NAME.dat needs gt/NAME.png")
    return SpikeFolder(pairs, int(window or T or 65), height, width, rate)
