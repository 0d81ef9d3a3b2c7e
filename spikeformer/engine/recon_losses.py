"""The losses of SpikeFormer's training (official ``Model/Loss.py`` and ``train.py``), on images in [-1, 1]:

``100 * Charbonnier + 5 * edge + 1 * perceptual``; the perceptual term needs VGG19 weights the user supplies (the
official ``vgg19-low-level4.pth``, or torchvision's ``vgg19`` state_dict), read with ``weights_only=True``; without
them it is left out. The temporal-consistency loss the paper's abstract names is not in the released code, nor here.

The official edge loss feeds its 1-channel images as 3 repeated channels through a 1-output Gaussian kernel, so each
blur sums 3 copies: its "Laplacian" is ``x - 9 * L(x)`` instead of ``x - L(x)`` (``L``: blur, 2x decimation,
zero-filled 4x upsampling, blur), and a constant image gives -8 times itself, not 0. ``EdgeLoss(mode="official")``
(the default, the loss the published model was trained with) reproduces it; ``mode="laplacian"`` is the
Laplacian-pyramid edge loss the code was adapted from (MPRNet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeformerError

GAUSS_1D = (0.05, 0.25, 0.4, 0.25, 0.05)
EDGE_MODES = ("official", "laplacian")


class CharbonnierLoss(nn.Module):
    """``mean(sqrt((x - y)^2 + eps^2))``, a smooth L1 (official eps 1e-3)."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        diff = x - y
        return torch.mean(torch.sqrt(diff * diff + self.eps * self.eps))


class EdgeLoss(nn.Module):
    """Charbonnier distance between the band-pass images of ``x`` and ``y`` ``[B, C, H, W]`` (see the module
    docstring for the two modes)."""

    def __init__(self, mode: str = "official", eps: float = 1e-3):
        super().__init__()
        if mode not in EDGE_MODES:
            raise SpikeformerError(f"edge loss mode must be one of {', '.join(EDGE_MODES)}; got {mode!r}")
        self.mode = mode
        k = torch.tensor(GAUSS_1D)
        self.register_buffer("kernel", torch.outer(k, k)[None, None], persistent=False)
        self.charbonnier = CharbonnierLoss(eps)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype).expand(C, 1, 5, 5), groups=C)

    def band(self, x: torch.Tensor) -> torch.Tensor:
        """``x - L(x)`` (laplacian) or ``x - 9 L(x)`` (official)."""
        filtered = self._blur(x)
        up = torch.zeros_like(filtered)
        up[..., ::2, ::2] = filtered[..., ::2, ::2] * 4
        low = self._blur(up)
        return x - (9 * low if self.mode == "official" else low)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.charbonnier(self.band(x), self.band(y))


VGG_LAYERS = (0, 2, 5, 7, 10)  # conv1_1, conv1_2, conv2_1, conv2_2, conv3_1 of torchvision's vgg19.features


class VGGPerceptualLoss(nn.Module):
    """MSE between VGG19 features up to relu3_1 of the target and of the prediction (grey images repeated to 3
    channels, no ImageNet normalisation, as the official ``VGGLoss4``). The weights are frozen."""

    def __init__(self, weights: str):
        super().__init__()
        layers: list[nn.Module] = []
        chans = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256)]
        for c in chans:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c[0], c[1], 3, 1, 1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        sd = _read_vgg(weights)
        try:
            self.load_state_dict(sd)
        except RuntimeError as e:
            raise SpikeformerError(f"{weights}: not VGG19 weights ({str(e).splitlines()[0]})") from None
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        rep = (1, 3 // target.shape[1], 1, 1) if target.shape[1] in (1, 3) else None
        if rep is None:
            raise SpikeformerError(f"the perceptual loss takes 1- or 3-channel images, not {target.shape[1]}")
        with torch.no_grad():
            real = self.features(target.repeat(rep))
        return F.mse_loss(real, self.features(pred.repeat(rep)))


def _read_vgg(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpikeformerError(f"VGG weights not found: {p} (pass the official vgg19-low-level4.pth or torchvision's "
                               "vgg19 weights file)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise SpikeformerError(f"{p}: cannot read it with weights_only=True ({str(e).splitlines()[0]})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    keep = {f"features.{i}.{n}" for i in VGG_LAYERS for n in ("weight", "bias")}
    out = {k: v for k, v in sd.items() if k in keep} if isinstance(sd, dict) else {}
    if set(out) != keep:
        raise SpikeformerError(f"{p}: expected VGG19 weights with keys features.0 ... features.10; "
                               f"missing {sorted(keep - set(out))[:3]}")
    return out


class ReconLoss(nn.Module):
    """``charbonnier * Charbonnier + edge * EdgeLoss + perceptual * VGG`` on prediction and target in [-1, 1]
    (official weights 100, 5, 1). ``forward`` returns the total and its parts (floats, for logging)."""

    def __init__(self, charbonnier: float = 100.0, edge: float = 5.0, perceptual: float = 1.0,
                 edge_mode: str = "official", vgg_weights: Optional[str] = None):
        super().__init__()
        self.w = {"charbonnier": float(charbonnier), "edge": float(edge),
                  "perceptual": float(perceptual) if vgg_weights else 0.0}
        self.charbonnier = CharbonnierLoss()
        self.edge = EdgeLoss(edge_mode)
        self.vgg = VGGPerceptualLoss(vgg_weights) if vgg_weights and perceptual else None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        parts = {"charbonnier": self.charbonnier(target, pred)}
        if self.w["edge"]:
            parts["edge"] = self.edge(target, pred)
        if self.vgg is not None:
            parts["perceptual"] = self.vgg(target, pred)
        total = sum(self.w[k] * v for k, v in parts.items())
        return total, {k: v.item() for k, v in parts.items()}
