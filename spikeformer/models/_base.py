"""The model contract every family follows (``../shared/STYLE.md``, "The model contract").

A family's model subclasses :class:`SpikingClassifier` and implements two things:

* ``forward_features_per_step(x) -> [T, B, D]``: what its classifier sees at every time step (pooled features);
* ``forward(x) -> [B, K]``: the logits, computed exactly as the official code computes them (the mean over time may
  come before or after the head, which decides the last bits of the logits).

From these the base class gives the rest of the contract:

* ``forward_features(x) -> [B, D]``: the per-step features averaged over time;
* ``forward_per_step(x) -> [T, B, K]``: per-step logits, what TET-style losses need (``head_per_step`` applies the
  classifier to every step; families whose head holds a neuron override it);
* ``get_classifier()`` / ``reset_classifier(num_classes)``: the classifier module named by ``classifier_name``;
* ``no_weight_decay()``: parameter names the optimizer must not decay (``spikeformer train`` reads it);
* ``num_features``, ``T``, ``in_chans``, ``num_classes``.

Neurons keep their state inside one forward call (no ``reset_net`` between batches), as before.
"""

from __future__ import annotations

import torch
from torch import nn


class SpikingClassifier(nn.Module):
    """Base class of every registered classifier."""

    classifier_name: str = "head"
    classifier_bias: bool = True
    num_features: int
    T: int
    in_chans: int
    num_classes: int

    # -- what a family provides --------------------------------------------------------------------------------
    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` -> per-step features ``[T, B, D]``."""
        raise NotImplementedError

    def head_per_step(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-step logits ``[T, B, K]`` from per-step features ``[T, B, D]``."""
        return self.get_classifier()(feats)

    # -- the contract ----------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged features ``[B, D]`` (what ``forward_head`` of timm models takes)."""
        return self.forward_features_per_step(x).mean(0)

    def forward_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Per-time-step logits ``[T, B, K]``; their mean over time is the prediction of :meth:`forward` up to the
        rounding of where the mean is taken."""
        return self.head_per_step(self.forward_features_per_step(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_per_step(x).mean(0)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, **_) -> None:
        """A new, freshly initialised classifier for ``num_classes`` classes (``0``: features only)."""
        self.num_classes = num_classes
        old = self.get_classifier()
        dev = next((p.device for p in old.parameters()), None) if isinstance(old, nn.Module) else None
        new = nn.Linear(self.num_features, num_classes, bias=self.classifier_bias) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, new.to(dev) if dev is not None else new)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters excluded from weight decay (beyond 1-D tensors, which the optimizer never decays)."""
        return set()
