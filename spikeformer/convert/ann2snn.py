"""ANN-to-SNN conversion with QCFS activations, and step-by-step simulation of the converted network.

The recipe of Bu et al. (ICLR 2022) as the Masked Spiking Transformer's code runs it (``utils_QCFS.py``,
``modules_QCFS.py``, ``main.py: snn_validate``):

1. :func:`replace_activations` puts a :class:`~spikeformer.layers.qcfs.QCFS` activation (``levels`` steps,
   learnable threshold ``up`` starting at ``threshold``) in place of every ReLU of an ANN, which is then trained.
2. :func:`ann_to_snn` replaces every QCFS by a :class:`ScaledIF`: an integrate-and-fire neuron with soft reset and
   threshold 1 on ``x / up``, whose membrane is pre-charged to half the threshold before the first input, and whose
   output is ``spike * up``. A ReLU left without a threshold becomes a ``ScaledIF`` of scale 1. Everything else is
   kept (BatchNorm with its running statistics, softmax and LayerNorm run on per-step values: a hybrid SNN, as the
   official code's).
3. :func:`simulate` feeds the same input at every step and returns the per-step outputs ``[steps, B, K]``; the
   prediction after ``t`` steps is the argmax of their sum over the first ``t`` (:func:`accuracy_over_time`).

The neurons carry their membrane from one call of the network to the next through the streaming API of
:mod:`spikeformer.neurons` (``init_state`` / ``step``): no history is kept, so memory does not grow with the number
of steps. :func:`simulate` clears the membranes before the first and after the last step.
"""

from __future__ import annotations

import copy
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from ..errors import SpikeformerError
from ..layers.qcfs import QCFS, check_ratio
from ..neurons import IF

ACTIVATIONS = (nn.ReLU, QCFS)


class ScaledIF(nn.Module):
    """The converted activation: ``spike * scale``, the spike from an IF neuron (soft reset, threshold 1) fed
    ``x / scale``, with the membrane pre-charged to 0.5 before the first step.

    The membrane lives in :attr:`state` between calls (one call = one time step); :meth:`reset` clears it."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        if not float(scale) > 0:
            raise SpikeformerError(f"a converted neuron needs a positive scale (the QCFS threshold); got {scale!r}")
        self.scale = float(scale)
        self.node = IF(v_threshold=1.0, v_reset=None)
        self.state: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.scale
        if self.state is None or self.state.shape != x.shape:
            # the membrane keeps at least fp32; the official neuron starts at 0 and is fed 0.5 once
            v = self.node.init_state(x).to(torch.promote_types(x.dtype, torch.float32))
            _, self.state = self.node.step(torch.full_like(x, 0.5), v)
        spike, self.state = self.node.step(x, self.state)
        return spike * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


def _children_to_replace(model: nn.Module, kinds) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, kinds):
                yield parent, name, child


def replace_activations(model: nn.Module, levels: int = 16, threshold: float = 2.0) -> nn.Module:
    """Put a QCFS activation (``levels`` steps, threshold ``up = threshold``) in place of every ``nn.ReLU`` of
    ``model`` (in place; returned for chaining). An existing QCFS keeps its trained threshold and takes ``levels``.
    Raises when the model has no ReLU or QCFS to replace."""
    found = 0
    for parent, name, child in list(_children_to_replace(model, ACTIVATIONS)):
        if isinstance(child, QCFS):
            child.levels = int(levels)
        else:
            q = QCFS(levels, threshold)
            ref = next((p for p in model.parameters()), None)
            if ref is not None:
                q = q.to(device=ref.device, dtype=ref.dtype)
            setattr(parent, name, q)
        found += 1
    if not found:
        raise SpikeformerError(f"{type(model).__name__} has no nn.ReLU or QCFS activation to replace; conversion "
                               "needs an ANN whose activations are ReLU modules (not F.relu calls)")
    return model


def replace_maxpool(model: nn.Module) -> int:
    """Replace every ``nn.MaxPool2d`` of ``model`` by the ``nn.AvgPool2d`` of the same window (in place; returns how
    many). The maximum of spike trains is not the spike train of the maximum of rates, while the average is: QCFS
    networks are trained with average pooling for conversion (``utils_QCFS.replace_maxpool2d_by_avgpool2d``)."""
    n = 0
    for parent, name, child in list(_children_to_replace(model, nn.MaxPool2d)):
        setattr(parent, name, AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
        n += 1
    return n


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` that also takes frames ``[T, B, C, H, W]`` (time folded into the batch), as the max-pools
    of the spiking families it replaces do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() <= 4:
            return super().forward(x)
        lead = x.shape[:-3]
        return super().forward(x.flatten(0, len(lead) - 1)).unflatten(0, lead)


class _ReLUNeuron(nn.ReLU):
    """A ReLU that takes (and ignores) the neuron arguments a spiking model passes its neuron factory, so a family
    with a ``neuron=`` argument builds as an ANN."""

    def __init__(self, *_, **__):
        super().__init__()


def ann_variant(name: str, levels: int = 16, threshold: float = 2.0, **overrides) -> nn.Module:
    """The QCFS ANN of a registered spiking model whose neuron is an argument (``neuron=``), e.g. the conv baseline
    ``spiking_convnet_digits``: every neuron becomes a QCFS activation (``levels``, ``up = threshold``), max pooling
    becomes average pooling, ``T = 1``, exact numerics (the fast kernels of the spiking blocks assume binary spikes).
    Train it like any model, then :func:`ann_to_snn` runs it as an SNN. Families that build their neurons
    themselves (MST is already an ANN) are refused."""
    from ..models import create_model

    overrides = {"T": 1, **overrides, "neuron": _ReLUNeuron}
    try:
        model = create_model(name, numerics="exact", **overrides)
    except SpikeformerError as e:
        raise SpikeformerError(f"{name} has no ANN variant: its neurons cannot be replaced through neuron= ({e})") from None
    if not any(isinstance(m, _ReLUNeuron) for m in model.modules()):
        raise SpikeformerError(f"{name} did not build its neurons from neuron=; it has no ANN variant for conversion")
    replace_maxpool(model)
    replace_activations(model, levels, threshold)
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "ann_variant": {"levels": int(levels),
                                                                                    "threshold": float(threshold)}}
    return model


def ann_to_snn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The converted SNN of a QCFS-trained ANN: every QCFS (and every plain ReLU) becomes a :class:`ScaledIF`.

    Returns a copy in eval mode (``inplace=True`` converts ``model`` itself). A model with a ``T`` attribute (the
    spikeformer classifiers) gets ``T = 1``: one call is one simulation step. A directly trained SNN, or any model
    without ReLU/QCFS activations, is refused with a :class:`~spikeformer.errors.SpikeformerError`.
    """
    acts = list(_children_to_replace(model, ACTIVATIONS))
    if not acts:
        name = getattr(model, "model_name", type(model).__name__)
        raise SpikeformerError(
            f"{name} has no QCFS or ReLU activation to convert: ANN-to-SNN conversion needs an ANN trained with QCFS "
            "activations (the MST family, or replace_activations(model) before training); a directly trained SNN "
            "already spikes and needs no conversion")
    snn = model if inplace else copy.deepcopy(model)
    for parent, name, child in list(_children_to_replace(snn, ACTIVATIONS)):
        scale = float(child.up.detach().reshape(-1)[0]) if isinstance(child, QCFS) else 1.0
        setattr(parent, name, ScaledIF(scale))
    if isinstance(getattr(snn, "T", None), int):
        snn.T = 1
    return snn.eval()


def reset_snn(snn: nn.Module) -> None:
    """Clear the membrane of every converted neuron (a new sample starts from the pre-charge)."""
    for m in snn.modules():
        if isinstance(m, ScaledIF):
            m.reset()


def set_masking_ratio(model: nn.Module, ratio: float) -> int:
    """Set the Random Spike Masking ratio of every module that masks (an MST, ANN or converted); returns how many
    modules took it."""
    r = check_ratio(ratio)
    n = 0
    for m in model.modules():
        if "masking_ratio" in vars(m):
            m.masking_ratio = r
            n += 1
    return n


def iter_simulate(snn: nn.Module, x: torch.Tensor, steps: int) -> Iterator[torch.Tensor]:
    """Yield the network's output at each of ``steps`` steps, the same input ``x`` fed at every step."""
    if not isinstance(steps, int) or steps < 1:
        raise SpikeformerError(f"the number of simulation steps must be a positive integer; got {steps!r}")
    if not any(isinstance(m, ScaledIF) for m in snn.modules()):
        raise SpikeformerError("the network has no converted neurons; call ann_to_snn(model) first")
    reset_snn(snn)
    try:
        with torch.no_grad():
            for _ in range(steps):
                yield snn(x)
    finally:
        reset_snn(snn)


def simulate(snn: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Per-step outputs ``[steps, B, K]`` of a converted network fed ``x`` at every step (membranes cleared before
    and after). Memory: the network's activations of one step plus the ``[steps, B, K]`` outputs."""
    return torch.stack(list(iter_simulate(snn, x, steps)))


def accuracy_over_time(per_step: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Correct predictions ``[steps]`` after each number of steps: the argmax of the outputs summed over steps
    ``1..t`` (``main.py: snn_validate``)."""
    pred = per_step.cumsum(0).argmax(-1)  # [steps, B]
    return (pred == targets.to(pred.device)[None]).sum(1)


def time_points(steps: int, extra: Sequence[int] = ()) -> list[int]:
    """1, 2, 4, ... up to ``steps`` (and ``steps`` itself), plus ``extra``: where accuracy is reported."""
    pts, t = set(), 1
    while t <= steps:
        pts.add(t)
        t *= 2
    pts.add(steps)
    pts.update(int(e) for e in extra if 1 <= int(e) <= steps)
    return sorted(pts)


__all__ = ["ScaledIF", "accuracy_over_time", "ann_to_snn", "ann_variant", "iter_simulate", "replace_activations",
           "replace_maxpool", "reset_snn", "set_masking_ratio", "simulate", "time_points"]
