"""Transforms: DVS clip augmentations (flip, roll, cutout) and resizing for ``[T, C, H, W]`` frames; static-image
pipelines through timm (RandAugment, random erasing) and a mixup/cutmix helper that also handles frame clips.

The DVS augmentations follow the papers' code (reference 2.7, 4.x, SpikingResformer's ``DVSAugment``): one random
draw per clip, applied identically to every time step and both polarities: horizontal flip, a roll (translation
with wrap-around, as the ``cifar10-dvs-tet`` loader's ±5 px roll), and cutout (a zeroed square, as the papers'
RandomErasing-based Cutout).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import SpikeformerError


def _check_clip(x: torch.Tensor) -> None:
    if x.dim() < 3:
        raise SpikeformerError(f"expected frames [..., H, W], got shape {tuple(x.shape)}")


class RandomFlip:
    """Horizontal flip of the whole clip with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_clip(x)
        return x.flip(-1) if self.p > 0 and torch.rand(()) < self.p else x


class RandomRoll:
    """Shift the clip by integers drawn uniformly from ``[-max_shift, max_shift]`` in x and y (wrapping around)."""

    def __init__(self, max_shift: int = 5):
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_clip(x)
        if self.max_shift <= 0:
            return x
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


class Cutout:
    """With probability ``p`` zero one square whose area is a fraction in ``scale`` of the frame (all time steps)."""

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.001, 0.11)):
        self.p, self.scale = p, tuple(scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_clip(x)
        if self.p <= 0 or torch.rand(()) >= self.p:
            return x
        H, W = x.shape[-2:]
        area = H * W * float(torch.empty(()).uniform_(*self.scale))
        side = max(1, min(H, W, int(round(math.sqrt(area)))))
        top = int(torch.randint(0, H - side + 1, ()))
        left = int(torch.randint(0, W - side + 1, ()))
        x = x.clone()
        x[..., top:top + side, left:left + side] = 0
        return x


class FrameResize:
    """Resize every frame of ``[T, C, H, W]`` (or ``[C, H, W]``) to ``size``; counts are averaged ('area') when
    shrinking, like the per-frame ``transforms.Resize`` the SDT CIFAR10-DVS loader applies (bilinear otherwise)."""

    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_clip(x)
        lead = x.shape[:-3]
        y = x.reshape(-1, *x.shape[-3:])
        shrink = self.size[0] <= y.shape[-2] and self.size[1] <= y.shape[-1]
        y = F.interpolate(y, size=self.size, mode="area" if shrink else "bilinear",
                          **({} if shrink else {"align_corners": False}))
        return y.reshape(*lead, *y.shape[-3:])


class Compose:
    def __init__(self, transforms):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


def dvs_augment(flip: float = 0.5, roll: int = 5, cutout: float = 0.5,
                cutout_scale: Sequence[float] = (0.001, 0.11)) -> Compose:
    """The training augmentation for event clips: flip (probability), roll (max px), cutout (probability)."""
    return Compose([RandomFlip(flip) if flip > 0 else None, RandomRoll(roll) if roll > 0 else None,
                    Cutout(cutout, cutout_scale) if cutout > 0 else None])


# --------------------------------------------------------------------------------------------------- static images

def static_transform(train: bool, img_size: int, mean: Sequence[float], std: Sequence[float],
                     auto_augment: Optional[str] = None, re_prob: float = 0.0, hflip: float = 0.5,
                     scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                     interpolation: str = "bicubic", crop_pct: float = 0.875):
    """timm's ``create_transform``: train = RandomResizedCrop(scale, ratio) + flip + RandAugment + random erasing;
    eval = Resize(img_size / crop_pct) + CenterCrop(img_size). The papers' recipes set ``scale=ratio=(1, 1)`` for
    CIFAR and ``rand-m9-mstd0.5-inc1`` / ``re_prob=0.25`` for ImageNet (reference 2.7)."""
    from timm.data import create_transform

    if train:
        return create_transform(img_size, is_training=True, auto_augment=auto_augment, re_prob=re_prob, hflip=hflip,
                                scale=tuple(scale), ratio=tuple(ratio), interpolation=interpolation, mean=tuple(mean),
                                std=tuple(std))
    return create_transform(img_size, is_training=False, interpolation=interpolation, mean=tuple(mean),
                            std=tuple(std), crop_pct=crop_pct)


class MixupCutmix:
    """timm's Mixup / CutMix with soft labels, for images ``[B, C, H, W]`` and frame clips ``[B, T, C, H, W]``.

    Clips are mixed as ``[B, T*C, H, W]`` so every time step gets the same box and mixing weight.
    Use with ``timm.loss.SoftTargetCrossEntropy``; the batch size must be even.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, mode: str = "batch"):
        from timm.data import Mixup

        self.mix = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                         mode=mode, label_smoothing=label_smoothing, num_classes=num_classes)

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        if x.shape[0] % 2:
            raise SpikeformerError(f"mixup/cutmix needs an even batch size, got {x.shape[0]} (use drop_last=True)")
        if x.dim() == 5:
            B, T, C, H, W = x.shape
            y, t = self.mix(x.reshape(B, T * C, H, W), target)
            return y.reshape(B, T, C, H, W), t
        return self.mix(x, target)
