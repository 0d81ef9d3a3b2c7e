"""The model contract every family follows (``../shared/STYLE.md``, "The model contract").

A family's model subclasses :class:`SpikingClassifier` and implements two things:

* ``forward_features_per_step(x) -> [T, B, D]``: what its classifier sees at every time step (pooled features);
* ``forward(x) -> [B, K]``: the logits, computed exactly as the official code computes them (the mean over time may
  come before or after the head, which decides the last bits of the logits).

From these the base class gives the rest of the contract:

* ``forward_features(x) -> [B, D]``: the per-step features averaged over time;
* ``forward_per_step(x) -> [T, B, K]``: per-step logits, what TET-style losses need (``head_per_step`` applies the
  classifier to every step; families whose head holds a neuron override it);
* ``forward_head(feats, pre_logits=False)``: timm's head call on ``forward_features`` output (see its docstring for
  heads that hold a neuron);
* ``get_classifier()`` / ``reset_classifier(num_classes)``: the classifier module named by ``classifier_name``;
* ``no_weight_decay()``: parameter names the optimizer must not decay (``spikeformer train`` reads it);
* ``num_features`` (= ``head_hidden_size``: no pre-logits layer), ``T``, ``in_chans``, ``num_classes``.

A family also declares ``self.feature_info``: one dict per stage (``num_chs``, ``reduction``, ``module``) from which
``create_model(name, features_only=True)`` returns per-stage feature maps (:mod:`spikeformer.models._features`).
Pooling is part of each published architecture, so ``forward_features`` is pooled ``[B, D]`` (timm's contract for
its transformer families); unpooled maps come from ``features_only=True``.

Neurons keep their state inside one forward call (no ``reset_net`` between batches), as before.
"""

from __future__ import annotations

import abc

from typing import Optional

import torch
from torch import nn

from ..errors import ModelOptionError


def check_global_pool(model: nn.Module, global_pool: Optional[str]) -> None:
    """``reset_classifier``'s timm argument ``global_pool`` must stay ``None``: each family's pooling is part of its
    published architecture; per-stage unpooled maps come from ``create_model(name, features_only=True)``."""
    if global_pool is not None:
        raise ModelOptionError(
            f"{type(model).__name__}: the global pooling is fixed by the architecture (got global_pool="
            f"{global_pool!r}); for unpooled feature maps use create_model(name, features_only=True)"
        )


class SpikingClassifier(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every registered classifier."""

    classifier_name: str = "head"
    classifier_bias: bool = True
    num_features: int
    T: int
    in_chans: int
    num_classes: int
    feature_info: list[dict]  # per stage: num_chs, reduction, module (see the module docstring)

    @property
    def head_hidden_size(self) -> int:
        """Width of what the classifier sees (timm's name); no family has a pre-logits layer."""
        return self.num_features

    # -- what a family provides --------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward_features_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` -> per-step features ``[T, B, D]``."""

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

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's ``forward_head``: logits ``[B, K]`` (``pre_logits=True``: the features ``[B, D]``) from

        * per-step features ``[T, B, D]`` (:meth:`forward_features_per_step`): the mean over time of the per-step
          logits, which is :meth:`forward`'s output up to where the mean is taken, for every family;
        * time-averaged features ``[B, D]`` (:meth:`forward_features`): the head applied to them as one time step,
          which is :meth:`forward`'s output where the head is affine; a head that holds a neuron or normalises over
          time (SDT's head LIF, MA-SNN's output layer) needs the per-step features.
        """
        if feats.dim() == 3:
            return feats.mean(0) if pre_logits else self.head_per_step(feats).mean(0)
        return feats if pre_logits else self.head_per_step(feats.unsqueeze(0))[0]

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, **_) -> None:
        """A new, freshly initialised classifier for ``num_classes`` classes (``0``: features only);
        ``global_pool``: see :func:`check_global_pool`."""
        check_global_pool(self, global_pool)
        self.num_classes = num_classes
        old = self.get_classifier()
        dev = next((p.device for p in old.parameters()), None) if isinstance(old, nn.Module) else None
        new = nn.Linear(self.num_features, num_classes, bias=self.classifier_bias) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, new.to(dev) if dev is not None else new)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters excluded from weight decay (beyond 1-D tensors, which the optimizer never decays)."""
        return set()
