"""Spiking patch stems: the convolutional tokenizers of Spikformer (SPS), Spikingformer and the Spike-driven
Transformer (MS_SPS).

All three are a chain of conv3x3 (stride 1, padding 1, no bias) -> BatchNorm2d stages whose widths grow to the
embedding dimension, with a spiking neuron and optionally a 3x3/2 max-pool between stages, and differ only in

* where the neurons sit: after every stage (Spikformer), after every stage but the last, whose BatchNorm output is
  the stem's real-valued output (Spikingformer's pre-activation tokenizer), or after the last stage's *pool*
  (Spike-driven Transformer);
* the relative position embedding that may close the stem: ``x + LIF(BN(conv(x)))`` on the spikes (Spikformer,
  ``rpe="spikes"``) or ``x + BN(conv(LIF(x)))`` on the real-valued map (the SDT membrane shortcut,
  ``rpe="membrane"``);
* the names of the modules, which are the official state_dict keys.

:class:`SpikingPatchStem` takes these as parameters and runs every stage through the shared blocks
(:func:`~spikeformer.layers.blocks.conv_bn_neuron`, :func:`~spikeformer.layers.blocks.conv_bn`): with exact numerics
the official NCHW operations on the merged ``[T*B, C, H, W]`` batch; with fast numerics channels-last frames, the
stages after the first convolving only the nonzero spikes where few fire, BatchNorm + neuron as one compiled kernel,
and the compiled max-pool (:mod:`spikeformer.layers.pool`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from .blocks import channels_last, conv_bn, conv_bn_neuron
from .numerics import NumericsAware, wants_fast
from .pool import max_pool
from .time import seq_apply

NAMES = ("sps", "tokenizer")
RPE = (None, "spikes", "membrane")


def stem_widths(embed_dim: int, stages: int = 4) -> tuple[int, ...]:
    """``D/8, D/4, D/2, D`` (and ``D`` again for each stage beyond four): the widths of every official stem."""
    if embed_dim % 8:
        raise SpikeformerError(f"embed_dim must be a multiple of 8 (the stem widths are D/8, D/4, D/2); got {embed_dim}")
    return tuple(embed_dim // 2 ** max(3 - i, 0) for i in range(stages))


class SpikingPatchStem(NumericsAware, nn.Module):
    """Frames ``[T, B, C, H, W]`` -> ``[T, B, D, H', W']``: conv3x3-BN stages with neurons, max-pools and an optional
    relative position embedding.

    Args:
        in_chans: input channels (3 for images, 2 for event frames).
        embed_dim: ``D``, the width of the last stage (and of the output).
        neuron: a factory of neurons (``neuron()`` builds one), as every family takes it.
        stages: number of conv-BN stages: 4 (Spikformer, SDT) or 5 (Spikingformer); widths :func:`stem_widths`.
        pool_stages: 0-based indices of the stages followed by a 3x3/2 max-pool (after the stage's neuron; with
            ``rpe="membrane"``, the last stage pools its BatchNorm output before its neuron).
        last_neuron: whether the last stage has a neuron. ``False`` (Spikingformer): the stem returns the last
            BatchNorm's real-valued output and ``rpe`` must be ``None``.
        rpe: ``None``; ``"spikes"``: ``x + LIF(BN(conv3x3(x)))`` on the last stage's (pooled) spikes, modules
            ``rpe_conv``/``rpe_bn``/``rpe_lif`` (Spikformer); ``"membrane"``: the last stage's BatchNorm output
            ``m`` (pooled) gives ``m + BN(conv3x3(LIF(m)))`` with the last stage's neuron, modules
            ``rpe_conv``/``rpe_bn`` (Spike-driven Transformer's MS_SPS).
        names: the official module names. ``"sps"``: stage ``i`` is ``proj_conv{i}``, ``proj_bn{i}``,
            ``proj_lif{i}`` (no index for ``i = 0``; Spikformer, SDT). ``"tokenizer"``: stage ``i`` is
            ``proj{i}_conv``, ``proj{i}_bn`` (``proj_conv``, ``proj_bn`` for ``i = 0``) and the neuron after stage
            ``i`` is ``proj{i+1}_lif``, the official name of the LIF opening the next stage (Spikingformer).
            Modules are built in the official order either way, so seeded initialisations are the official ones.
        fp32_stages: under autocast, how many leading stages stay fp32 (the first stage sees real-valued images,
            and its low-precision rounding flips more spikes than any other layer's; every early flip spreads).
        rpe_spikes_in: whether the fast path may convolve only the nonzero inputs of the ``rpe="spikes"``
            convolution (after a max-pool spikes are denser; the sparse product falls back to the dense one by
            itself above its density limit, after a pass over the input).

    The pool module is ``pool``; the model files' ``checkpoint_filter_fn`` keep mapping official keys as before.
    """

    def __init__(self, in_chans: int, embed_dim: int, neuron, *, stages: int = 4,
                 pool_stages: Sequence[int] = (0, 1, 2, 3), last_neuron: bool = True, rpe: Optional[str] = None,
                 names: str = "sps", fp32_stages: int = 0, rpe_spikes_in: bool = False):
        super().__init__()
        if names not in NAMES:
            raise ValueError(f"names must be one of {NAMES}; got {names!r}")
        if rpe not in RPE:
            raise ValueError(f"rpe must be one of {RPE}; got {rpe!r}")
        if rpe is not None and not last_neuron:
            raise ValueError("a relative position embedding needs the last stage's neuron (last_neuron=True)")
        pool_stages = tuple(int(i) for i in pool_stages)
        if any(not 0 <= i < stages for i in pool_stages):
            raise SpikeformerError(f"pool_stages must be stage indices in 0..{stages - 1}; got {pool_stages}")
        dims = (in_chans,) + stem_widths(embed_dim, stages)
        self.stages, self.pool_stages, self.names = stages, pool_stages, names
        self.last_neuron, self.rpe, self.fp32_stages, self.rpe_spikes_in = last_neuron, rpe, fp32_stages, rpe_spikes_in
        for i in range(stages):
            conv, bn, lif = self._names(i)
            setattr(self, conv, nn.Conv2d(dims[i], dims[i + 1], 3, 1, 1, bias=False))
            setattr(self, bn, nn.BatchNorm2d(dims[i + 1]))
            if i < stages - 1 or last_neuron:
                setattr(self, lif, neuron())
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        if rpe is not None:
            self.rpe_conv = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1, bias=False)
            self.rpe_bn = nn.BatchNorm2d(embed_dim)
        if rpe == "spikes":
            self.rpe_lif = neuron()

    def _names(self, i: int) -> tuple[str, str, str]:
        if self.names == "sps":
            sfx = "" if i == 0 else str(i)
            return f"proj_conv{sfx}", f"proj_bn{sfx}", f"proj_lif{sfx}"
        pre = "proj" if i == 0 else f"proj{i}"
        return f"{pre}_conv", f"{pre}_bn", f"proj{i + 1}_lif"

    def stage(self, i: int) -> tuple[nn.Conv2d, nn.Module, Optional[nn.Module]]:
        """``(conv, bn, neuron)`` of stage ``i`` (``neuron`` None where the stage has none)."""
        conv, bn, lif = self._names(i)
        return getattr(self, conv), getattr(self, bn), getattr(self, lif, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = wants_fast(self, x)
        autocast = torch.is_autocast_enabled(x.device.type)
        if fast:  # channels-last frames: oneDNN convolutions, BatchNorm and max-pool without layout reorders
            x = channels_last(x)
        pool = functools.partial(max_pool, self.pool)  # the compiled pool on channels-last frames
        last = self.stages - 1
        for i in range(self.stages):
            conv, bn, lif = self.stage(i)
            fp32 = autocast and i < self.fp32_stages
            with torch.autocast(x.device.type, enabled=False) if fp32 else contextlib.nullcontext():
                x = x.float() if fp32 else x
                if lif is None or (i == last and self.rpe == "membrane"):  # the neuron comes after the pool
                    x = conv_bn(conv, bn, x, spikes_in=i > 0, fast=fast)
                else:
                    # the last fp32 stage hands its spikes to a bf16 stage: bf16 from the kernel, no cast pass
                    handoff = (fp32 and i == self.fp32_stages - 1
                               and torch.get_autocast_dtype(x.device.type) == torch.bfloat16)
                    x = conv_bn_neuron(conv, bn, lif, x, spikes_in=i > 0, fast=fast,
                                       spikes_dtype=torch.bfloat16 if handoff else None)
            if i in self.pool_stages:
                x = seq_apply(pool, x)
        if self.rpe == "spikes":
            return x + conv_bn_neuron(self.rpe_conv, self.rpe_bn, self.rpe_lif, x, spikes_in=self.rpe_spikes_in,
                                      fast=fast)
        if self.rpe == "membrane":
            s = self.stage(last)[2](x)
            return x + conv_bn(self.rpe_conv, self.rpe_bn, s, spikes_in=True, fast=fast)
        return x
