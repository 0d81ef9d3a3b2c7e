"""NIR (Neuromorphic Intermediate Representation, Pedersen et al., Nat. Commun. 15, 8122 (2024)) export and import.

:func:`export_nir` turns a model made of layers NIR can express (the spiking conv nets ``spiking_convnet_*``, or an
``nn.Sequential`` of the layers below) into a ``nir.NIRGraph``; :func:`write_nir` writes it to an ``.nir`` (HDF5)
file; :func:`read_nir` turns a graph or file back into an executable module (:class:`NIRNetwork`) that runs it
multi-step on ``[T, B, ...]``. A layer NIR cannot express raises :class:`NIRExportError` naming the first such layer
(module path and type) and why.

Layers and their nodes (the eval-mode network: BatchNorm uses its running statistics):

* ``Conv2d`` [+ ``BatchNorm2d``] -> ``Conv2d`` with the BatchNorm folded into weight and bias
  (``W' = W * g / sqrt(var + eps)``, ``b' = beta + (b - mean) * g / sqrt(var + eps)``, in float64, stored as
  float32); a BatchNorm2d with no convolution before it becomes a depthwise 1x1 ``Conv2d``.
* ``Linear`` [+ ``BatchNorm1d``] -> ``Affine`` (``Linear`` without bias), BatchNorm folded the same way.
* ``Flatten`` -> ``Flatten``; NIR counts dimensions of one sample (no batch dimension), so ``nn.Flatten(1)`` on a
  batch becomes ``Flatten(start_dim=0)``.
* ``AvgPool2d`` -> ``AvgPool2d`` (zero padding counted, as NIR's sum-then-scale).
* ``MaxPool2d`` over binary spikes -> ``SumPool2d`` then ``IF(r=1, v_threshold=0.5, v_reset=0)``: the sum of 0/1
  spikes is an integer, the IF starts every step at 0 and fires iff the sum is at least 1, which is the maximum.
  NIR has no max-pool node, so a max-pool over anything but a neuron's spikes is refused.
* Neurons (``IF``, ``LIF``, ``PLIF`` of :mod:`spikeformer.neurons`, hard reset only).

Neuron mapping. Our neurons follow SpikingJelly (time step = one step of the ``[T, ...]`` tensor):
``H = V + X`` (IF); ``H = V + (X - (V - V_reset)) / tau`` (LIF, ``decay_input=True``);
``H = V - (V - V_reset) / tau + X`` (``decay_input=False``); spike ``S = [H >= V_th]``; hard reset
``V = H (1 - S) + V_reset S``. NIR's nodes are continuous-time: LIF ``tau dv/dt = (v_leak - v) + r I``, IF
``dv/dt = r I``, spike when ``v > v_threshold``, then ``v = v_reset``. With a simulator's forward-Euler step ``dt``
(seconds; ``dt`` is stored in the graph's metadata) the export is

* IF  -> ``IF(r=1, v_threshold=V_th, v_reset=V_reset)``: every NIR consumer (Norse, sinabs, the NIR paper's CNN)
  adds a step's input to the membrane as one jump, which is our ``H = V + X``;
* LIF -> ``LIF(tau=tau*dt, r=1 (decay_input) or tau (not), v_leak=V_reset, v_threshold=V_th, v_reset=V_reset)``:
  Euler ``v += dt/tau_nir * (v_leak - v + r X)`` is then our charge equation exactly;
* PLIF -> the same LIF with its learned ``tau = 1 / sigmoid(w)`` frozen.

Not expressible, hence refused: soft reset (``v_reset=None``, subtract the threshold: NIR neurons reset to a value),
integer/multi-level spikes, analog-output neurons, attention, LayerNorm. Differences kept: NIR fires on ``v >
v_threshold`` where we fire on ``H >= V_th`` (only an exact tie differs), and the surrogate gradient and
``detach_reset`` are training settings NIR does not carry. The default ``dt`` of 1e-4 s is the NIR paper's and
snnTorch's (which hard-codes it); pass the same ``dt`` to the consumer (e.g. ``norse.torch.from_nir(g, dt=1e-4)``).

The graph's output is the classifier's per-step output; spikeformer's classifiers average it over time
(graph metadata ``readout = "mean_over_time"``), which :meth:`NIRNetwork.forward` leaves to the caller as
``out.mean(0)``. Node metadata repeats the exact per-step ``tau`` (and PLIF's ``w``) so that :func:`read_nir` rebuilds
the same neuron bit for bit; other consumers need only the arrays. The import refuses nodes our neurons cannot run
(per-neuron parameters that differ, ``v_leak != v_reset``, ``CubaLIF``, recurrent graphs) with a message naming
the node.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeformerError

DEFAULT_DT = 1e-4
SOURCE_TAG = "spikeformer"
_ADVICE = "export only conv/linear/pool/neuron models such as spiking_convnet_cifar10"


class NIRExportError(SpikeformerError):
    """A layer NIR cannot express (or the exporter cannot place); ``layer`` is its module path, ``layer_type`` its
    class name."""

    def __init__(self, layer: str, layer_type: str, reason: str, advice: str = _ADVICE):
        self.layer, self.layer_type = layer, layer_type
        where = f"{layer} ({layer_type})" if layer else layer_type
        super().__init__(f"{where}: {reason}; {advice}" if advice else f"{where}: {reason}")


def _nir():
    try:
        import nir
    except ImportError:
        raise SpikeformerError("NIR export/import needs the 'nir' package: pip install 'spikeformer[nir]' "
                               "(or pip install nir)") from None
    return nir


# -- what NIR cannot express ----------------------------------------------------------------------------------------
def _class_names(m: nn.Module) -> list[str]:
    return [c.__name__ for c in type(m).__mro__]


def why_inexpressible(m: nn.Module) -> Optional[str]:
    """Why NIR has no node for module ``m``, or None when it may have one."""
    from ..neurons import IF, LIF, PLIF, BaseNode, IntegerLIF

    names = _class_names(m)
    if "MultiDimAttention" in names:
        return "NIR has no attention node (multiplicative gating of activations by other activations)"
    if any("Attention" in n for n in names) or names[0] in ("SSA", "SDSA", "DSSA"):
        return ("NIR has no spiking self-attention node (it multiplies two spike tensors; NIR has only linear maps, "
                "pools and neurons)")
    if isinstance(m, IntegerLIF):
        return "NIR neurons emit binary spikes; integer (multi-level) spikes have no NIR node"
    if isinstance(m, BaseNode):
        if type(m) not in (IF, LIF, PLIF):
            return "NIR has only IF and LIF neurons with binary spikes; this neuron has no NIR node"
        if m.v_reset is None:
            return ("NIR neurons reset to v_reset; reset by subtraction (v_reset=None) has no NIR node, build the "
                    "model with v_reset=0.0")
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return "NIR has no normalisation computed at run time (LayerNorm/GroupNorm)"
    if names[0] == "QCFS":
        return "QCFS is an ANN activation with no NIR node; convert the model with spikeformer.convert.ann_to_snn"
    return None


def first_inexpressible(model: nn.Module) -> Optional[tuple[str, nn.Module, str]]:
    """``(path, module, reason)`` of the first module (in registration order) NIR cannot express, or None."""
    for path, m in model.named_modules():
        reason = why_inexpressible(m)
        if reason:
            return path, m, reason
    return None


# -- export ---------------------------------------------------------------------------------------------------------
def _f32(t) -> Any:
    import numpy as np

    if isinstance(t, torch.Tensor):
        t = t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float32)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval BatchNorm as ``y = x * a + c`` (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise NIRExportError("", type(bn).__name__, "a BatchNorm without running statistics has no fixed eval map",
                             "build it with track_running_stats=True")
    a = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.double()
    c = -bn.running_mean.double() * a
    if bn.bias is not None:
        c = c + bn.bias.double()
    return a, c


class _Builder:
    """Walks a sequence of ``(path, module)`` and emits a chain of NIR nodes."""

    def __init__(self, input_shape: Sequence[int], dt: float):
        self.nir = _nir()
        self.shape = tuple(int(s) for s in input_shape)
        self.dt = float(dt)
        self.nodes: list[tuple[str, Any]] = []
        self.spiking = False  # is the current signal binary spikes (a neuron's output)?
        self.foldable: Optional[str] = None  # kind of the last node if a BatchNorm may fold into it

    # nodes --------------------------------------------------------------------------------------------------------
    def _emit(self, name: str, node, shape, spiking: bool, foldable: Optional[str] = None) -> None:
        self.nodes.append((name, node))
        self.shape, self.spiking, self.foldable = tuple(int(s) for s in shape), spiking, foldable

    def conv(self, path: str, conv: nn.Conv2d, bn: Optional[nn.Module] = None) -> None:
        if len(self.shape) != 3:
            raise NIRExportError(path, type(conv).__name__, f"expects a [C, H, W] sample here, got {list(self.shape)}")
        if conv.padding_mode != "zeros":
            raise NIRExportError(path, type(conv).__name__,
                                 f"NIR convolutions pad with zeros, not {conv.padding_mode!r}")
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if bn is not None:
            a, c = _bn_affine(bn)
            w, b = w * a.view(-1, 1, 1, 1), b * a + c
        pad = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        node = self.nir.Conv2d(input_shape=self.shape[1:], weight=_f32(w), stride=_pair(conv.stride), padding=pad,
                               dilation=_pair(conv.dilation), groups=int(conv.groups), bias=_f32(b))
        out = F.conv2d(torch.empty(1, *self.shape, device="meta"), torch.empty(w.shape, device="meta"), None,
                       conv.stride, conv.padding, conv.dilation, conv.groups).shape[1:]
        self._emit(path, node, out, False, "conv")

    def batchnorm(self, path: str, bn: nn.Module) -> None:
        """A BatchNorm right after a conv/linear folds into it; alone it becomes a per-channel map."""
        a, c = _bn_affine(bn)
        if self.foldable is not None:
            name, node = self.nodes[-1]
            if self.foldable == "conv":
                node.weight = _f32(torch.from_numpy(node.weight).double() * a.view(-1, 1, 1, 1))
            else:
                node.weight = _f32(torch.from_numpy(node.weight).double() * a.view(-1, 1))
            bias = torch.from_numpy(node.bias).double() if getattr(node, "bias", None) is not None else 0.0
            node.bias = _f32(bias * a + c)
            if self.foldable == "linear" and type(node).__name__ == "Linear":  # a bias appears: Linear -> Affine
                self.nodes[-1] = (name, self.nir.Affine(weight=node.weight, bias=node.bias))
            self.foldable = None
            return
        if len(self.shape) == 3:  # depthwise 1x1 convolution: y[c] = a[c] x[c] + c[c]
            C = self.shape[0]
            node = self.nir.Conv2d(input_shape=self.shape[1:], weight=_f32(a.view(C, 1, 1, 1)), stride=1, padding=0,
                                   dilation=1, groups=C, bias=_f32(c))
        elif len(self.shape) == 1:
            node = self.nir.Affine(weight=_f32(torch.diag(a)), bias=_f32(c))
        else:
            raise NIRExportError(path, type(bn).__name__, f"a BatchNorm on a {list(self.shape)} sample has no NIR map")
        self._emit(path, node, self.shape, False, None)

    def linear(self, path: str, lin: nn.Linear, bn: Optional[nn.Module] = None) -> None:
        if len(self.shape) != 1:
            raise NIRExportError(path, type(lin).__name__,
                                 f"NIR's Affine maps one vector per sample, but here the sample is {list(self.shape)} "
                                 "(a token layout); flatten first")
        w = lin.weight.detach().double()
        b = lin.bias.detach().double() if lin.bias is not None else None
        if bn is not None:
            a, c = _bn_affine(bn)
            w, b = w * a.view(-1, 1), (0.0 if b is None else b) * a + c
        node = self.nir.Linear(weight=_f32(w)) if b is None else self.nir.Affine(weight=_f32(w), bias=_f32(b))
        self._emit(path, node, (w.shape[0],), False, "linear")

    def flatten(self, path: str, start: int = 0, end: int = -1) -> None:
        import numpy as np

        node = self.nir.Flatten(input_type={"input": np.array(self.shape)}, start_dim=start, end_dim=end)
        out = torch.empty(self.shape, device="meta").flatten(start, end).shape
        self._emit(path, node, out, self.spiking)

    def max_pool(self, path: str, pool: nn.MaxPool2d) -> None:
        if not self.spiking:
            raise NIRExportError(path, type(pool).__name__,
                                 "NIR has no max-pool node; a max-pool is exported (as SumPool2d + IF) only over "
                                 "binary spikes, but its input here is not a neuron's output")
        if pool.ceil_mode or pool.return_indices or _pair(pool.dilation) != (1, 1):
            raise NIRExportError(path, type(pool).__name__, "ceil_mode, dilation and return_indices have no NIR form")
        k = _pair(pool.kernel_size)
        s = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        p = _pair(pool.padding)
        import numpy as np

        out = F.max_pool2d(torch.empty(1, *self.shape, device="meta"), k, s, p).shape[1:]
        self._emit(f"{path}.sum", self.nir.SumPool2d(kernel_size=np.array(k), stride=np.array(s),
                                                     padding=np.array(p)), out, False)
        full = lambda v: np.full(self.shape, v, dtype=np.float32)  # noqa: E731
        node = self.nir.IF(r=full(1.0), v_threshold=full(0.5), v_reset=full(0.0),
                           metadata={"spikeformer_op": "max_pool_of_spikes"})
        self._emit(f"{path}.any", node, self.shape, True)

    def avg_pool(self, path: str, pool: nn.AvgPool2d) -> None:
        if pool.ceil_mode or not pool.count_include_pad or pool.divisor_override is not None:
            raise NIRExportError(path, type(pool).__name__,
                                 "NIR's AvgPool2d is a sum over the window divided by its size (padding counted); "
                                 "ceil_mode, count_include_pad=False and divisor_override have no NIR form")
        import numpy as np

        k = _pair(pool.kernel_size)
        s = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        p = _pair(pool.padding)
        out = F.avg_pool2d(torch.empty(1, *self.shape, device="meta"), k, s, p).shape[1:]
        self._emit(path, self.nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p)),
                   out, False)

    def neuron(self, path: str, m: nn.Module) -> None:
        import numpy as np

        from ..neurons import IF, PLIF

        reason = why_inexpressible(m)
        if reason:
            raise NIRExportError(path, type(m).__name__, reason)
        full = lambda v: np.full(self.shape, v, dtype=np.float32)  # noqa: E731
        vth, vr = m.v_threshold, m.v_reset
        if isinstance(m, IF):
            node = self.nir.IF(r=full(1.0), v_threshold=full(vth), v_reset=full(vr))
        else:
            tau = float(m.tau)
            meta = {"spikeformer_neuron": type(m).__name__, "tau_steps": tau, "decay_input": int(m.decay_input)}
            if isinstance(m, PLIF):
                meta["w"] = float(m.w.detach())
            node = self.nir.LIF(tau=full(tau * self.dt), r=full(1.0 if m.decay_input else tau), v_leak=full(vr),
                                v_threshold=full(vth), v_reset=full(vr), metadata=meta)
        self._emit(path, node, self.shape, True)

    # modules ------------------------------------------------------------------------------------------------------
    def add(self, path: str, m: nn.Module) -> None:
        from ..layers.blocks import ConvBNNeuron
        from ..models.spiking_convnet import ConvBlock
        from ..neurons import BaseNode

        reason = why_inexpressible(m)
        if reason:
            raise NIRExportError(path, type(m).__name__, reason)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return  # identities in eval
        if isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                self.add(f"{path}.{name}" if path else name, child)
        elif isinstance(m, ConvBlock):
            self.conv(f"{path}.conv", m.conv, m.bn)
            self.neuron(f"{path}.neuron", m.neuron)
        elif isinstance(m, ConvBNNeuron):
            self.conv(f"{path}.conv", m.conv, m.bn)
            if m.lif is not None:
                self.neuron(f"{path}.lif", m.lif)
        elif isinstance(m, nn.Conv2d):  # subclasses (fast kernels) compute the same map
            self.conv(path, m)
        elif isinstance(m, nn.Linear):
            self.linear(path, m)
        elif type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            self.batchnorm(path, m)
        elif type(m) is nn.Flatten:
            # nn.Flatten counts the batch dimension, NIR's Flatten does not
            if m.start_dim == 0:
                raise NIRExportError(path, "Flatten", "flattening the batch dimension has no NIR form")
            start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim
            end = m.end_dim - 1 if m.end_dim > 0 else m.end_dim
            self.flatten(path, start, end)
        elif type(m) is nn.MaxPool2d:
            self.max_pool(path, m)
        elif type(m) is nn.AvgPool2d:
            self.avg_pool(path, m)
        elif isinstance(m, BaseNode):
            self.neuron(path, m)
        else:
            raise NIRExportError(path, type(m).__name__, f"the NIR exporter has no mapping for {type(m).__name__}")


def _convnet_input_shape(model) -> tuple[int, int, int]:
    c_last = model.features[-2].conv.out_channels
    side = math.isqrt(model.flat_features // c_last) * 8
    return (model.in_chans, side, side)


def _default_input_shape(model: nn.Module) -> Optional[tuple[int, ...]]:
    from ..models.spiking_convnet import SpikingConvNet

    if isinstance(model, SpikingConvNet):
        return _convnet_input_shape(model)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return tuple(size) if size else None


def export_nir(model: nn.Module, input_shape: Optional[Sequence[int]] = None, dt: float = DEFAULT_DT,
               metadata: Optional[dict] = None):
    """The NIR graph of ``model`` (eval semantics) for one sample of ``input_shape`` (``(C, H, W)``, no batch or time
    dimension; default: the model's configured input size). ``dt`` is the simulator step in seconds that NIR's
    continuous-time LIF ``tau`` is expressed in (see the module docstring). Raises :class:`NIRExportError` naming the
    first layer NIR cannot express."""
    import numpy as np

    from ..models.spiking_convnet import SpikingConvNet

    nir = _nir()
    if not (isinstance(dt, (int, float)) and dt > 0):
        raise SpikeformerError(f"dt must be a positive time step in seconds, got {dt!r}")
    bad = first_inexpressible(model)
    if bad is not None:
        path, m, reason = bad
        raise NIRExportError(path, type(m).__name__, reason)
    if input_shape is None:
        input_shape = _default_input_shape(model)
        if input_shape is None:
            raise SpikeformerError("cannot tell the model's input size; pass input_shape=(C, H, W)")
    input_shape = tuple(int(s) for s in input_shape)
    b = _Builder(input_shape, dt)
    if isinstance(model, SpikingConvNet):
        for i, layer in enumerate(model.features):
            b.add(f"features.{i}", layer)
        if b.shape[0] * b.shape[1] * b.shape[2] != model.flat_features:
            raise SpikeformerError(f"input shape {list(input_shape)} gives {list(b.shape)} after the conv stages but "
                                   f"the model was built for {model.flat_features} features; pass the image size "
                                   "the model was built for")
        b.flatten("flatten", 0, -1)
        b.add("fc1", model.fc1)
        b.add("fc1_neuron", model.fc1_neuron)
        b.add("head", model.head)
    elif isinstance(model, nn.Sequential):
        b.add("", model)
    else:
        raise NIRExportError("", type(model).__name__,
                             "the NIR exporter follows nn.Sequential models and the spiking conv nets; this model's "
                             "forward (residual connections, token layout) is not a plain sequence of layers",
                             "NIR itself could express its layers, but not through this exporter")
    if not b.nodes:
        raise SpikeformerError("the model has no layers to export")
    nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
    names = []
    for name, node in b.nodes:
        if name in nodes:
            raise SpikeformerError(f"two NIR nodes are both named {name!r}")
        nodes[name] = node
        names.append(name)
    nodes["output"] = nir.Output(output_type={"output": np.array(b.shape)})
    chain = ["input", *names, "output"]
    meta = {"source": SOURCE_TAG, "dt": float(dt), "readout": "mean_over_time",
            "model": str(getattr(model, "model_name", type(model).__name__))}
    if isinstance(getattr(model, "T", None), int):
        meta["T"] = model.T
    meta.update(metadata or {})
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain[:-1], chain[1:])), metadata=meta)


def write_nir(model: nn.Module, path: str | os.PathLike, input_shape: Optional[Sequence[int]] = None,
              dt: float = DEFAULT_DT, metadata: Optional[dict] = None) -> Path:
    """Export ``model`` (:func:`export_nir`) and write the graph to ``path`` (HDF5, NIR's file format)."""
    nir = _nir()
    graph = export_nir(model, input_shape, dt, metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(str(path), graph)
    return path


# -- import ---------------------------------------------------------------------------------------------------------
def _decode(v):
    import numpy as np

    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _meta(node) -> dict:
    return {k: _decode(v) for k, v in (getattr(node, "metadata", None) or {}).items()}


def _uniform(name: str, kind: str, field: str, arr) -> float:
    import numpy as np

    a = np.asarray(arr, dtype=np.float64)
    if a.size == 0:
        raise SpikeformerError(f"NIR node {name!r} ({kind}) has an empty {field}")
    v = float(a.flat[0])
    if not np.all(a == v):
        raise SpikeformerError(f"NIR node {name!r} ({kind}): {field} differs between neurons; spikeformer's neurons "
                               "share one value per layer")
    return v


class _PerStep(nn.Module):
    """A stateless map applied to every time step (T folded into the batch)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        return self.fn(x.flatten(0, 1)).unflatten(0, (T, B))


class _SumPool2d(nn.Module):
    def __init__(self, k, s, p):
        super().__init__()
        self.k, self.s, self.p = k, s, p

    def forward(self, x):
        return F.avg_pool2d(x, self.k, self.s, self.p, divisor_override=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.k}, stride={self.s}, padding={self.p}"


class _Flatten(nn.Module):
    """NIR's Flatten counts the dimensions of one sample; here the sample sits behind one batch dimension."""

    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x):
        return x.flatten(self.start + 1 if self.start >= 0 else self.start, self.end + 1 if self.end >= 0 else self.end)


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x):
        return x * self.scale


class _Threshold(nn.Module):
    def __init__(self, threshold: torch.Tensor):
        super().__init__()
        self.register_buffer("threshold", threshold)

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


class _GainNeuron(nn.Module):
    """A neuron whose input NIR scales by ``r`` first (``r`` not 1 and not absorbed by ``decay_input``)."""

    def __init__(self, gain: float, neuron: nn.Module):
        super().__init__()
        self.gain, self.neuron = gain, neuron

    def forward(self, x):
        return self.neuron(x * self.gain)


def _t(a) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(a, dtype=np.float32))


def _module_for(name: str, node, dt: float) -> nn.Module:
    """The spikeformer module running one NIR node on ``[T, B, ...]``."""
    import numpy as np

    from ..neurons import IF, LIF, PLIF

    kind = type(node).__name__
    if kind == "Affine" or kind == "Linear":
        w = _t(node.weight)
        if w.dim() != 2:
            raise SpikeformerError(f"NIR node {name!r} ({kind}) has a {w.dim()}-D weight; only 2-D maps are supported")
        has_bias = kind == "Affine" and node.bias is not None
        lin = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        with torch.no_grad():
            lin.weight.copy_(w)
            if has_bias:
                lin.bias.copy_(_t(node.bias))
        return _PerStep(lin)
    if kind == "Conv2d":
        w = _t(node.weight)
        pad = node.padding
        pad = pad if isinstance(pad, str) else tuple(int(p) for p in np.broadcast_to(np.asarray(pad), (2,)))
        stride = tuple(int(p) for p in np.broadcast_to(np.asarray(node.stride), (2,)))
        dil = tuple(int(p) for p in np.broadcast_to(np.asarray(node.dilation), (2,)))
        groups = int(node.groups)
        bias = node.bias is not None and np.asarray(node.bias).size > 0
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, pad, dil, groups, bias=bias)
        with torch.no_grad():
            conv.weight.copy_(w)
            if bias:
                conv.bias.copy_(_t(node.bias).reshape(-1).expand(w.shape[0]))
        return _PerStep(conv)
    if kind in ("SumPool2d", "AvgPool2d"):
        k, s, p = (tuple(int(v) for v in np.broadcast_to(np.asarray(a), (2,)))
                   for a in (node.kernel_size, node.stride, node.padding))
        return _PerStep(_SumPool2d(k, s, p) if kind == "SumPool2d" else nn.AvgPool2d(k, s, p))
    if kind == "Flatten":
        return _PerStep(_Flatten(int(node.start_dim), int(node.end_dim)))
    if kind == "Scale":
        return _PerStep(_Scale(_t(node.scale)))
    if kind == "Threshold":
        return _PerStep(_Threshold(_t(node.threshold)))
    if kind == "IF":
        r = _uniform(name, kind, "r", node.r)
        neuron = IF(v_threshold=_uniform(name, kind, "v_threshold", node.v_threshold),
                    v_reset=_uniform(name, kind, "v_reset", node.v_reset))
        return neuron if r == 1.0 else _GainNeuron(r, neuron)
    if kind == "LIF":
        meta = _meta(node)
        tau_nir = _uniform(name, kind, "tau", node.tau)
        r = _uniform(name, kind, "r", node.r)
        v_leak = _uniform(name, kind, "v_leak", node.v_leak)
        vth = _uniform(name, kind, "v_threshold", node.v_threshold)
        vr = _uniform(name, kind, "v_reset", node.v_reset)
        if v_leak != vr:
            raise SpikeformerError(f"NIR node {name!r} (LIF) leaks towards v_leak={v_leak} but resets to {vr}; "
                                   "spikeformer's LIF leaks towards its reset value")
        tau = tau_nir / dt
        exact = meta.get("tau_steps")
        if isinstance(exact, (int, float)) and math.isclose(float(exact) * dt, tau_nir, rel_tol=1e-6):
            tau = float(exact)  # the exporter's own per-step tau, free of the float32 rounding of tau*dt
        if not tau > 1.0:
            raise SpikeformerError(f"NIR node {name!r} (LIF): tau/dt = {tau:g} steps, but a discrete LIF needs more "
                                   "than one step; pass the graph's time step as dt=")
        if r == 1.0:
            decay_input, gain = True, 1.0
        elif math.isclose(r, tau, rel_tol=1e-6):
            decay_input, gain = False, 1.0
        else:
            decay_input, gain = True, r
        if meta.get("spikeformer_neuron") == "PLIF" and isinstance(meta.get("w"), float):
            neuron = PLIF(init_tau=tau, decay_input=decay_input, v_threshold=vth, v_reset=vr)
            with torch.no_grad():
                neuron.w.fill_(meta["w"])
        else:
            neuron = LIF(tau=tau, decay_input=decay_input, v_threshold=vth, v_reset=vr)
        return neuron if gain == 1.0 else _GainNeuron(gain, neuron)
    raise SpikeformerError(f"NIR node {name!r} ({kind}): spikeformer cannot run this node type; it runs Affine, "
                           "Linear, Conv2d, Flatten, SumPool2d, AvgPool2d, Scale, Threshold, IF and LIF nodes")


class NIRNetwork(nn.Module):
    """A NIR graph run by spikeformer's layers: input ``[T, B, *input_shape]`` (or ``[B, *input_shape]``,
    repeated over ``T`` steps) -> output ``[T, B, *output_shape]``, every node over all steps before the next (the
    graph is feed-forward, so this equals stepping the whole graph). Nodes with several inputs sum them (NIR's edge
    semantics). Classifiers exported by spikeformer average the output over time (``out.mean(0)``)."""

    def __init__(self, graph, dt: Optional[float] = None):
        super().__init__()
        nir = _nir()
        if not isinstance(graph, nir.NIRGraph):
            raise SpikeformerError(f"expected a nir.NIRGraph, got {type(graph).__name__}")
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        self.metadata = {k: _decode(v) for k, v in meta.items()}
        self.dt = float(dt if dt is not None else self.metadata.get("dt", DEFAULT_DT))
        T = self.metadata.get("T")
        self.T = int(T) if isinstance(T, (int, float)) else None
        inputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
        outputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise SpikeformerError(f"the NIR graph has {len(inputs)} Input and {len(outputs)} Output nodes; "
                                   "spikeformer runs graphs with exactly one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = graph.nodes[self.input_name].input_type.get("input")
        self.input_shape = tuple(int(s) for s in shape) if shape is not None else None
        for a, b in graph.edges:
            for n in (a, b):
                if n not in graph.nodes:
                    raise SpikeformerError(f"the NIR graph has an edge to unknown node {n!r}")
        preds = {n: [] for n in graph.nodes}
        for a, b in graph.edges:
            preds[b].append(a)
        self.order = self._topological(graph.nodes, graph.edges)
        self.preds = preds
        self.keys = {n: f"n{i}_" + "".join(c if c.isalnum() else "_" for c in n) for i, n in enumerate(self.order)}
        self.layers = nn.ModuleDict()
        for n in self.order:
            if n in (self.input_name, self.output_name):
                continue
            if isinstance(graph.nodes[n], nir.NIRGraph):
                raise SpikeformerError(f"NIR node {n!r} is a sub-graph; spikeformer runs flat graphs only")
            self.layers[self.keys[n]] = _module_for(n, graph.nodes[n], self.dt)
        self.node_types = {n: type(graph.nodes[n]).__name__ for n in self.order}

    @staticmethod
    def _topological(nodes, edges) -> list[str]:
        indeg = {n: 0 for n in nodes}
        succ = {n: [] for n in nodes}
        for a, b in edges:
            indeg[b] += 1
            succ[a].append(b)
        ready = [n for n in nodes if indeg[n] == 0]
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in succ[n]:
                indeg[m] -= 1
                if indeg[m] == 0:
                    ready.append(m)
        if len(order) != len(nodes):
            cyc = sorted(n for n in nodes if indeg[n] > 0)
            raise SpikeformerError(f"the NIR graph is recurrent (a cycle through {', '.join(cyc[:4])}); spikeformer "
                                   "runs feed-forward graphs only")
        return order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shape is not None:
            n = len(self.input_shape)
            if x.dim() == n + 1:
                if self.T is None:
                    raise SpikeformerError("the graph does not record T; pass frames [T, B, ...] or set .T")
                x = x.unsqueeze(0).expand(self.T, *x.shape)
            if x.dim() != n + 2 or tuple(x.shape[2:]) != self.input_shape:
                raise SpikeformerError(f"the NIR graph takes samples of shape {list(self.input_shape)} as [T, B, ...] "
                                       f"(or [B, ...]); got {tuple(x.shape)}")
        vals: dict[str, torch.Tensor] = {}
        for n in self.order:
            if n == self.input_name:
                vals[n] = x
                continue
            ins = [vals[p] for p in self.preds[n]]
            if not ins:
                raise SpikeformerError(f"NIR node {n!r} has no input")
            z = ins[0] if len(ins) == 1 else torch.stack(ins).sum(0)
            vals[n] = z if n == self.output_name else self.layers[self.keys[n]](z)
        return vals[self.output_name]

    def summary(self) -> str:
        """One line per node: name, NIR type and the module that runs it."""
        lines = []
        for n in self.order:
            mod = self.layers[self.keys[n]] if self.keys[n] in self.layers else None
            inner = mod.fn if isinstance(mod, _PerStep) else mod
            lines.append(f"{n:<24} {self.node_types[n]:<10} {inner if inner is not None else ''}".rstrip())
        return "\n".join(lines)


def read_nir(source, dt: Optional[float] = None) -> NIRNetwork:
    """A :class:`NIRNetwork` running a NIR graph (a ``nir.NIRGraph`` or the path of an ``.nir`` file); ``dt`` is the
    graph's time step in seconds (default: the one our exporter recorded, else 1e-4)."""
    nir = _nir()
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise SpikeformerError(f"NIR file not found: {p}")
        try:
            graph = nir.read(str(p))
        except Exception as e:  # h5py's OSError for non-HDF5, KeyError/AssertionError for malformed graphs
            raise SpikeformerError(f"{p}: not a readable NIR file ({type(e).__name__}: {e})") from None
    else:
        graph = source
    return NIRNetwork(graph, dt)


__all__ = ["DEFAULT_DT", "NIRExportError", "NIRNetwork", "export_nir", "first_inexpressible", "read_nir",
           "why_inexpressible", "write_nir"]
