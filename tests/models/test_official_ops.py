"""The exact path of every token model runs the official code's operation types: 1x1 Conv1d/Conv2d where the official
code projects tokens with a convolution, nn.Linear where it uses Linear (recorded aten calls of an eval forward).
The fast path of the same models runs no such convolution (token GEMMs)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spikeformer
from spikeformer.models import get_model_info


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.addmm, torch.ops.aten.mm,
                                   torch.ops.aten.linear):
            w = args[1]
            self.calls.append((func.overloadpacket.__name__, tuple(w.shape)))
        return func(*args, **kwargs)


def _ops(name: str, numerics: str):
    torch.manual_seed(0)
    m = spikeformer.create_model(name, T=1, numerics=numerics).eval()
    c, h, _ = get_model_info(name).input_size
    with torch.no_grad(), OpCounter() as rec:
        m(torch.rand(1, c, 32, 32))
    return rec.calls, m


def _token_convs(calls, dim):
    """Convolutions with a 1x1 kernel (Conv1d [o, i, 1] or Conv2d [o, i, 1, 1]) among the recorded calls."""
    return [s for op, s in calls if op == "convolution" and len(s) in (3, 4) and all(k == 1 for k in s[2:])]


# name -> (1x1 Conv1d per block, 1x1 Conv2d per block, Linear per block) of the official code
CASES = {
    "spikformer_8_384": (4, 2, 0),       # imagenet/model.py: q/k/v/proj Conv1d, fc1/fc2 Conv2d
    "spikformer_dvs_2_256": (6, 0, 0),   # cifar10dvs/model.py: Conv1d everywhere
    "spikformer_cifar_4_256": (0, 0, 6),  # cifar10/model.py: nn.Linear everywhere
    "spikingformer_8_384": (4, 2, 0),    # every Spikingformer: Conv1d attention, Conv2d MLP
    "spikingformer_cifar_4_256": (4, 2, 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_path_uses_the_official_operation_types(name):
    conv1d, conv2d, linear = CASES[name]
    calls, m = _ops(name, "exact")
    depth = len(m.block)
    convs = _token_convs(calls, m.embed_dim)
    assert sum(len(s) == 3 for s in convs) == conv1d * depth
    assert sum(len(s) == 4 for s in convs) == conv2d * depth
    gemms = [s for op, s in calls if op in ("addmm", "mm", "linear")]
    assert len(gemms) == linear * depth + 1  # + the classifier head


@pytest.mark.parametrize("name", ["spikformer_8_384", "spikingformer_8_384"])
def test_fast_path_runs_token_gemms_instead(name):
    calls, _ = _ops(name, "fast")
    assert not _token_convs(calls, 0)
