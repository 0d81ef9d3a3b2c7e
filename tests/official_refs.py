"""Shared references for the checks against the official Spikformer / Spikingformer code.

The golden files come from the official code itself (see tests/data/make_official_golden.py): each
``tests/data/<family>_official_golden.safetensors`` holds, per layout, a small random model's official state_dict
(``<layout>/<official key>``, floats stored as fp16: the official model ran on exactly these values) and the
official code's eval-mode logits for :func:`golden_input` (``<layout>/logits``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"

_SMALL = dict(embed_dim=32, depth=2, num_heads=4, num_classes=10, batch=2, T=4)
_LAYOUTS = {
    "imagenet": dict(_SMALL, in_chans=3, img=64),
    "cifar": dict(_SMALL, in_chans=3, img=32),
    "dvs": dict(_SMALL, in_chans=2, img=128),  # the official DVS tokenizers hard-code 128x128 frames
}
LAYOUTS = {"spikformer": _LAYOUTS, "spikingformer": _LAYOUTS}


def bn_entries(prefix: str, c: int) -> list[tuple[str, tuple]]:
    """``(key, shape)`` of a BatchNorm's state_dict entries."""
    return [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def random_state_dict(entries: list[tuple[str, tuple]], seed: int = 0) -> dict:
    """Distinct random values for every entry (``num_batches_tracked`` as int64), so a misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.tensor(5) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g)
            for k, shape in entries}


def golden_input(spec: dict) -> torch.Tensor:
    """A fixed input from integer arithmetic (identical on every platform): images ``[B, C, H, W]`` in [-1, 1], or
    for ``in_chans == 2`` event-count frames ``[T, B, 2, H, W]`` with values 0..3."""
    B, C, S = spec["batch"], spec["in_chans"], spec["img"]
    if C == 2:
        i = torch.arange(spec["T"] * B * C * S * S, dtype=torch.int64)
        return ((i * 7919) % 11 - 7).clamp(min=0).float().reshape(spec["T"], B, C, S, S)
    i = torch.arange(B * C * S * S, dtype=torch.int64)
    return (((i * 7919) % 1001).float() / 500.0 - 1.0).reshape(B, C, S, S)


def golden_path(family: str) -> tuple[Path, bool]:
    """``(file, recorded_here)``: the family's golden file for this machine's kind of CPU
    (:func:`helpers.golden_for_this_cpu`); ``recorded_here`` False: only comparisons up to rounding can use it."""
    from helpers import golden_for_this_cpu

    return golden_for_this_cpu(DATA / f"{family}_official_golden.safetensors")


def load_golden(family: str) -> dict[str, tuple[dict, torch.Tensor]]:
    """``{layout: (official state_dict in fp32, official logits)}``, from :func:`golden_path`."""
    from safetensors.torch import load_file

    flat = load_file(str(golden_path(family)[0]))
    out: dict[str, tuple[dict, torch.Tensor]] = {}
    for layout in LAYOUTS[family]:
        pre = f"{layout}/"
        sd = {k[len(pre):]: (v.float() if v.is_floating_point() else v) for k, v in flat.items()
              if k.startswith(pre) and k != pre + "logits"}
        out[layout] = (sd, flat[pre + "logits"])
    return out


@contextlib.contextmanager
def one_thread():
    """Golden outputs are compared bit for bit: run with the thread count they were generated with."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
