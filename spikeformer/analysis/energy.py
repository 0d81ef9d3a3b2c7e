"""Energy, synaptic operations (SOPs) and firing rates of any model, from one forward pass.

``energy_report(model, inputs, convention="generic")`` runs ``model(inputs)`` once and watches every synaptic
operation -- ``F.linear`` / ``F.conv*`` (so every ``nn.Linear`` / ``nn.Conv*``) and every matrix product
(``torch.matmul``, ``@``, ``bmm``, ``mm``, ``scaled_dot_product_attention``), intercepted by a
``TorchFunctionMode`` so the spike x spike and spike x real products inside attention are found without
per-model code -- and every spiking neuron layer (subclasses of :class:`spikeformer.neurons.BaseNode`, plus any
leaf module that turns a non-binary ``[T, ...]`` input into a binary ``[T, ...]`` output).

Definitions (reference: Spikformer App. C.2 Eq. 21-22, Horowitz ISSCC 2014 unit energies)
-----------------------------------------------------------------------------------------
* ``FLOPs(l)``: multiply-accumulates of the ANN counterpart of layer ``l`` for one time step
  (conv: ``k^2 h_out w_out c_in/groups c_out``; linear: ``i o``; matmul ``[M,K]x[K,N]``: ``M K N``; biases are not
  counted). ``dense_macs`` is what the forward pass really executed per sample (``T x FLOPs`` for a layer run at
  every step, e.g. the first conv on an image repeated over T).
* firing rate ``fr``: fraction of non-zero entries of a binary input, per time step.
* ``SOPs(l) = fr x T x FLOPs(l)``; energy ``E = E_MAC x MACs + E_AC x SOPs`` (E_MAC = 4.6 pJ, E_AC = 0.9 pJ).
Everything is per input sample (the totals are divided by the batch size).

Conventions (``convention=`` name, or a :class:`Convention`)
-----------------------------------------------------------
``generic`` (default; the rule of syops-counter and of Spikingformer's counter with ``Nspks_max = 1``)
    Every conv, linear and matmul counts. Binary input -> accumulates, ``SOPs = fr x T x FLOPs``; a matmul of two
    spike tensors uses the sparser operand's rate (``K^T V`` costs ``min(fr_k, fr_v)``, ``Q (K^T V)`` costs
    ``fr_q``). Any non-binary input (analog pixels, SEW residual sums 0/1/2, real-valued attention, the pooled
    head input) -> MAC at the executed dense count. Neurons, BN, pooling and residual adds are not charged.
``spikingformer``
    The same rules as ``generic``: Spikingformer's ``energy_consumption_calculation`` charges non-binary inputs
    (first conv on pixels, the head) as MAC and the SSA as ``T heads N d d (min(fr_k, fr_v) + fr_q)`` AC, which is
    what ``generic`` measures on the executed matmuls. (Their counter adds biases to the head's MACs: +1000.)
``spikformer``
    Spikformer Eq. 22: the first synaptic layer is MAC, every other conv/FC/SSA product is AC. Integer
    multi-spike inputs (SEW sums) count with their value (``fr`` = mean input value, the paper's App. G
    "calculation 1"); real-valued inputs of later layers (the head) also count as AC with their mean value.
``sdt``
    Spike-driven Transformer: ``E_MAC x FL_conv^1 + E_AC x sum(SOPs)`` -- identical rules to ``spikformer``
    (first layer MAC, all later layers AC with the input's mean value as rate).
``spikingresformer``
    SpikingResformer's ``SOPMonitor``: the stem (first synaptic op) and the classifier are excluded; every other
    op counts ``sum(conv(x, ones_like(W)))`` -- the exact number of input events (weighted by value) times their
    fan-out, so zero padding is not charged; ``E = 0.9 pJ x SOPs`` (no MAC term).

Integer-valued neurons (I-LIF, MultiSpike, NI-LIF: :class:`spikeformer.neurons.IntegerLIF`)
-----------------------------------------------------------------------------------------------
An integer activation ``c`` in ``0..D`` stands for ``c`` binary spikes in ``D`` sub-steps (SDT-V3's "integer
training, spike-driven inference"), so in every convention an input holding a model's integer-neuron outputs
(integers in ``[0, D]``, or ``count / norm`` for NI-LIF) counts as spike events weighted by value: its ``rate`` is the
mean count per element and step (it may exceed 1), ``SOPs = rate x T x FLOPs``, i.e. an activation of 3 is three
synaptic events per fan-out; the neuron table counts events the same way. ``energy_report(..., binary=True)`` (and
:func:`binary_expanded`) runs every synaptic operation that reads such an input on its binary expansion instead (D
sub-steps of 0/1 spikes, :func:`spikeformer.neurons.expand_integer_spikes`, summed afterwards; the next layer gets
the same input up to float summation order), so the table then shows binary spike inputs at ``T x D`` steps with
the same SOPs.

``count="exact"`` (the ``spikingresformer`` rule, selectable on any convention with
``get_convention(name, count="exact")``) replaces ``fr x FLOPs`` of convs by the exact fan-out of the input
events (the zero-padded border is free) and spike x spike matmuls by the number of coinciding ones
(``sum(A @ B)``); this is what SpikingJelly 2.0's ``op_counter.SynOpCounter`` counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import SpikeformerError, suggest
from ..layers.numerics import numerics
from ..neurons import BaseNode, IntegerLIF, expand_integer_spikes

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


# ---------------------------------------------------------------------------------------------------------------
# conventions
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Convention:
    """How a paper turns the measured operations into SOPs, MACs and energy.

    ``nonbinary``: 'mac' (non-binary inputs charged as dense MACs) or 'value' (counted as AC with the mean absolute
    input value as the rate); ``first``: 'auto' (by its input), 'mac' (always MAC) or 'skip';
    ``classifier``: 'count' or 'skip'; ``count``: 'rate' (fr x T x FLOPs) or 'exact' (input events x fan-out);
    ``mac_energy``: whether MACs are charged at E_MAC.
    """

    name: str
    nonbinary: str = "mac"
    first: str = "auto"
    classifier: str = "count"
    count: str = "rate"
    mac_energy: bool = True

    def __post_init__(self):
        for attr, ok in (("nonbinary", ("mac", "value")), ("first", ("auto", "mac", "skip")),
                         ("classifier", ("count", "skip")), ("count", ("rate", "exact"))):
            if getattr(self, attr) not in ok:
                raise SpikeformerError(f"convention {attr}={getattr(self, attr)!r}: choose one of {ok}")


CONVENTIONS: dict[str, Convention] = {
    "generic": Convention("generic"),
    "spikingformer": Convention("spikingformer"),
    "spikformer": Convention("spikformer", nonbinary="value", first="mac"),
    "sdt": Convention("sdt", nonbinary="value", first="mac"),
    "spikingresformer": Convention("spikingresformer", nonbinary="value", first="skip", classifier="skip",
                                   count="exact", mac_energy=False),
}


def get_convention(convention: Union[str, Convention] = "generic", **overrides) -> Convention:
    """A named convention (see the module docstring), optionally with fields replaced."""
    if isinstance(convention, Convention):
        conv = convention
    else:
        key = str(convention).lower()
        if key not in CONVENTIONS:
            raise SpikeformerError(
                f"unknown energy convention {convention!r}.{suggest(key, CONVENTIONS)} "
                f"Choose one of {', '.join(CONVENTIONS)}"
            )
        conv = CONVENTIONS[key]
    return dataclasses.replace(conv, **overrides) if overrides else conv


# ---------------------------------------------------------------------------------------------------------------
# tensor classification
# ---------------------------------------------------------------------------------------------------------------
def _kind(x: torch.Tensor) -> str:
    """'spike' (all entries 0/1), 'count' (non-negative integers) or 'real'."""
    if x.dtype == torch.bool:
        return "spike"
    x = x.detach()
    if not x.is_floating_point():
        return "spike" if bool(((x == 0) | (x == 1)).all()) else "count"
    if bool(((x == 0) | (x == 1)).all()):
        return "spike"
    if bool((x >= 0).all()) and bool((x == torch.round(x)).all()):
        return "count"
    return "real"


def integer_levels(model: nn.Module) -> tuple:
    """``((D, scale), ...)`` of the integer neurons in ``model``: their outputs times ``scale`` (NI-LIF's ``norm``,
    else 1) are spike counts in ``0..D``."""
    return tuple(sorted({(m.D, m.norm or 1.0) for m in model.modules() if isinstance(m, IntegerLIF)}))


def _integer_scale(x: torch.Tensor, levels: tuple):
    """``(D, scale)`` when the non-binary ``x`` holds integer-neuron outputs (``x * scale`` integers in
    ``[0, D]``), else ``None``."""
    if not levels or not torch.is_tensor(x) or not x.is_floating_point() or x.numel() == 0:
        return None
    xd = x.detach()
    for D, scale in levels:
        y = xd * scale if scale != 1.0 else xd
        lo, hi = torch.aminmax(y)
        if float(lo) >= 0 and float(hi) <= D and bool((y == torch.round(y)).all()):
            return D, scale
    return None


def _mean_abs(x: torch.Tensor) -> float:
    return float(x.detach().abs().double().mean()) if x.numel() else 0.0


def _is_binary(x) -> bool:
    return torch.is_tensor(x) and x.numel() > 0 and _kind(x) == "spike"


# ---------------------------------------------------------------------------------------------------------------
# report types
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class OpRow:
    """One synaptic operation (a module, or the k-th matrix product inside a module), totals per sample."""

    name: str
    op: str  # 'conv2d', 'linear', 'matmul', ...
    module: str  # class of the module that ran it
    inputs: str = ""  # 'spike', 'count', 'real', 'spike x spike', ...
    calls: int = 0
    steps: int = 1  # time steps this op runs (T when fed [T*B, ...] or [T, B, ...]; 1 for e.g. a pooled head)
    dense_macs: float = 0.0  # executed multiply-accumulates per sample (= steps x FLOPs)
    rate: float = 0.0  # input firing rate per time step (mean value for non-binary inputs counted as AC)
    sops: float = 0.0
    macs: float = 0.0  # MACs charged at E_MAC
    energy_mj: float = 0.0
    counted: bool = True  # False when the convention excludes it (stem / classifier)
    note: str = ""
    # accumulators (per batch)
    _events: float = 0.0
    _rate_num: float = 0.0
    _rate_den: float = 0.0
    _macs_b: float = 0.0
    _dense_b: float = 0.0
    _kinds: list = field(default_factory=list)

    @property
    def flops(self) -> float:
        """FLOPs(l): dense MACs of one time step per sample."""
        return self.dense_macs / max(self.steps, 1)

    def as_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")}
        d["flops"] = self.flops
        return d


@dataclass
class NeuronRow:
    """Firing of one spiking layer: rate per time step, neurons per sample, spikes per sample."""

    name: str
    module: str
    T: int
    rates: list  # fraction of neurons firing at each time step
    neurons: float  # neurons per sample (one time step)
    spikes: float  # spikes per sample over all time steps

    @property
    def rate(self) -> float:
        return sum(self.rates) / max(len(self.rates), 1)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rate": self.rate}


@dataclass
class EnergyReport:
    """What :func:`energy_report` measured; all totals per input sample."""

    model: str
    convention: str
    T: int
    samples: int
    layers: list  # OpRow per synaptic operation, in execution order
    neurons: list  # NeuronRow per spiking layer, in execution order
    params: int
    e_mac: float = E_MAC_PJ
    e_ac: float = E_AC_PJ

    @property
    def sops(self) -> float:
        return sum(r.sops for r in self.layers if r.counted)

    @property
    def macs(self) -> float:
        """MACs charged at E_MAC (non-binary inputs), per sample."""
        return sum(r.macs for r in self.layers if r.counted)

    @property
    def flops(self) -> float:
        """FLOPs of the ANN counterpart (one time step, every op), per sample."""
        return sum(r.flops for r in self.layers)

    @property
    def dense_macs(self) -> float:
        """Everything executed as if dense, per sample (all time steps)."""
        return sum(r.dense_macs for r in self.layers)

    @property
    def total_mj(self) -> float:
        return sum(r.energy_mj for r in self.layers if r.counted)

    @property
    def ann_mj(self) -> float:
        """Energy of the ANN counterpart: E_MAC x FLOPs."""
        return self.flops * self.e_mac * 1e-9

    @property
    def firing_rate(self) -> float:
        """Mean firing rate over all spiking neurons and time steps (spikes / neuron-steps)."""
        den = sum(n.neurons * n.T for n in self.neurons)
        return sum(n.spikes for n in self.neurons) / den if den else 0.0

    def totals(self) -> dict:
        return {"model": self.model, "convention": self.convention, "T": self.T, "samples": self.samples,
                "params": self.params, "flops": self.flops, "dense_macs": self.dense_macs, "macs": self.macs,
                "sops": self.sops, "total_mj": self.total_mj, "ann_mj": self.ann_mj,
                "firing_rate": self.firing_rate, "e_mac_pj": self.e_mac, "e_ac_pj": self.e_ac}

    def as_dict(self) -> dict:
        return {"totals": self.totals(), "layers": [r.as_dict() for r in self.layers],
                "neurons": [n.as_dict() for n in self.neurons]}

    def table(self) -> str:
        """The per-layer table and the totals as plain text."""
        head = f"{'layer':<34} {'op':<8} {'input':<14} {'FLOPs/step':>11} {'rate':>6} {'SOPs':>11} {'MACs':>11} {'mJ':>9}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(f"{r.name[-34:]:<34} {r.op:<8} {r.inputs[:14]:<14} {_si(r.flops):>11} {r.rate:>6.3f} "
                         f"{_si(r.sops):>11} {_si(r.macs):>11} {r.energy_mj:>9.4f}"
                         + ("" if r.counted else "  (excluded)"))
        lines.append("-" * len(head))
        lines.append(f"{self.model}: {self.convention} convention, T={self.T}, per sample over {self.samples} "
                     f"sample(s): {_si(self.sops)} SOPs + {_si(self.macs)} MACs = {self.total_mj:.4f} mJ "
                     f"(ANN counterpart {_si(self.flops)} FLOPs = {self.ann_mj:.4f} mJ); "
                     f"params {self.params / 1e6:.2f}M; mean firing rate {self.firing_rate:.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _si(v: float) -> str:
    for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= unit:
            return f"{v / unit:.3f}{s}"
    return f"{v:.1f}"


# ---------------------------------------------------------------------------------------------------------------
# the watcher
# ---------------------------------------------------------------------------------------------------------------
_CONV = {F.conv1d: "conv1d", F.conv2d: "conv2d", F.conv3d: "conv3d"}
_CONVT = {F.conv_transpose1d: "convT1d", F.conv_transpose2d: "convT2d", F.conv_transpose3d: "convT3d"}
_MATMUL = {torch.matmul: "matmul", torch.Tensor.matmul: "matmul", torch.Tensor.__matmul__: "matmul",
           torch.Tensor.__rmatmul__: "matmul", torch.bmm: "matmul", torch.Tensor.bmm: "matmul",
           torch.mm: "matmul", torch.Tensor.mm: "matmul"}


class _Frame:
    __slots__ = ("name", "module", "counter")

    def __init__(self, name, module):
        self.name, self.module, self.counter = name, module, {}


class _Watcher(TorchFunctionMode):
    """Intercepts synaptic ops during one forward and attributes them to the innermost running module."""

    def __init__(self, conv: Convention, T: int, batch: int, names: dict, keep_attention: bool = False,
                 levels: tuple = ()):
        super().__init__()
        self.conv, self.T, self.B = conv, T, batch
        self.levels = levels
        self.rows: dict[str, OpRow] = {}
        self.stack: list[_Frame] = []
        self.names = names
        self.keep_attention = keep_attention
        self.attention: dict[str, torch.Tensor] = {}
        self._prev = None  # (out, A) of the last matmul, to recover attention from Q (K^T V)

    # module stack, maintained by forward hooks
    def push(self, module):
        self.stack.append(_Frame(self.names.get(id(module), type(module).__name__), module))

    def pop(self, module):
        if self.stack and self.stack[-1].module is module:
            self.stack.pop()

    def _row(self, op: str, module_op: bool) -> OpRow:
        frame = self.stack[-1] if self.stack else _Frame("", None)
        mod = frame.module
        if module_op and isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and not frame.counter:
            name = frame.name
        else:
            i = frame.counter.get(op, 0)
            name = f"{frame.name}.{op}{i}" if frame.name else f"{op}{i}"
        frame.counter[op] = frame.counter.get(op, 0) + 1
        if name not in self.rows:
            self.rows[name] = OpRow(name=name, op=op, module=type(mod).__name__ if mod is not None else "")
        return self.rows[name]

    def _steps(self, x: torch.Tensor) -> int:
        B = self.B
        # T steps, or T x D binary sub-steps of an integer input run by binary_expanded
        for T in (self.T, *(self.T * D for D, _ in self.levels)):
            if T > 1 and x.dim() >= 2 and (x.shape[0] == T * B
                                           or (x.dim() >= 3 and x.shape[0] == T and x.shape[1] == B)):
                return T
        return 1

    def _classify(self, x: torch.Tensor):
        """``(kind, scale)``: 'spike', 'int' (integer-neuron outputs, counted as ``x * scale`` events), 'count' or
        'real'."""
        kind = _kind(x)
        if kind != "spike":
            found = _integer_scale(x, self.levels)
            if found is not None:
                return "int", found[1]
        return kind, 1.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            if func is F.linear:
                self._linear(args, kwargs, out)
            elif func in _CONV:
                self._conv(_CONV[func], args, kwargs, out)
            elif func in _CONVT:
                self._convT(_CONVT[func], args, kwargs, out)
            elif func in _MATMUL:
                a, b = args[0], args[1]
                if func is torch.Tensor.__rmatmul__:
                    a, b = b, a
                if torch.is_tensor(a) and torch.is_tensor(b) and torch.is_tensor(out):
                    self._matmul(a, b, out)
            elif func is F.scaled_dot_product_attention:
                self._sdpa(args, kwargs, out)
        except SpikeformerError:
            raise
        except Exception:  # pragma: no cover - never let bookkeeping break a forward pass
            pass
        return out

    # -- accounting ---------------------------------------------------------------------------------------------
    def _charge(self, row: OpRow, kind: str, dense: float, x: torch.Tensor, exact_events=None, rate=None,
                scale: float = 1.0):
        """Add one call of ``dense`` MACs whose input (the event-driving operand) is ``x`` (events: ``x * scale``)."""
        row.calls += 1
        row._dense_b += dense
        if kind not in row._kinds:
            row._kinds.append(kind)
        spiking = any(k in ("spike", "int") for k in kind.split(" x "))
        if spiking or self.conv.nonbinary == "value":
            if rate is None:
                rate = float(x.detach().double().mean()) * scale if spiking else _mean_abs(x)
            exact = self.conv.count == "exact" and exact_events is not None
            row._events += exact_events if exact else rate * dense
            row._rate_num += rate * x.numel()
        else:
            row._macs_b += dense
            row._rate_num += x.numel()
        row._rate_den += x.numel()

    def _linear(self, args, kwargs, out):
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        row = self._row("linear", True)
        row.steps = max(row.steps, self._steps(x))
        dense = float(x.numel() // max(w.shape[-1], 1)) * w.shape[-1] * w.shape[0]
        kind, scale = self._classify(x)
        exact = float(x.detach().double().abs().sum()) * scale * w.shape[0]
        self._charge(row, kind, dense, x, exact, scale=scale)

    def _conv(self, op, args, kwargs, out):
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        names = ("stride", "padding", "dilation", "groups")
        params = dict(zip(names, args[3:7]))
        params.update({k: kwargs[k] for k in names if k in kwargs})
        groups = int(params.get("groups", 1))
        row = self._row(op, True)
        row.steps = max(row.steps, self._steps(x))
        dense = float(out.numel()) * (w.shape[1] * math.prod(w.shape[2:]))
        kind, scale = self._classify(x)
        exact = _conv_fanout(x, w, groups, params) * scale if self.conv.count == "exact" else None
        self._charge(row, kind, dense, x, exact, scale=scale)

    def _convT(self, op, args, kwargs, out):
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        row = self._row(op, True)
        row.steps = max(row.steps, self._steps(x))
        dense = float(x.numel()) * math.prod(w.shape[1:])  # every input feeds c_out/groups x k^d outputs
        kind, scale = self._classify(x)
        self._charge(row, kind, dense, x, scale=scale)

    def _matmul(self, a, b, out):
        row = self._row("matmul", False)
        row.steps = max(row.steps, self._steps(out if out.dim() >= 3 else a))
        if self.keep_attention:
            self._attention(row.name, a, b, out)
        self._pair(row, a, b, float(out.numel()) * a.shape[-1])

    def _pair(self, row, a, b, dense, exact_ok=True):
        (ka, sa), (kb, sb) = self._classify(a), self._classify(b)
        events = ("spike", "int")
        exact = None
        if ka in events and kb in events:
            # value-weighted event rates (integer-neuron outputs count as their spike counts)
            ra, rb = float(a.detach().double().mean()) * sa, float(b.detach().double().mean()) * sb
            src, rate = (a, ra) if ra <= rb else (b, rb)
            if exact_ok and a.dim() >= 2 and b.dim() >= 2:
                # coinciding ones, sum(A @ B) = sum_k colsum(A)_k * rowsum(B)_k (broadcast over the batch dims)
                exact = float((a.detach().double().sum(-2) * b.detach().double().sum(-1)).sum()) * sa * sb
        elif ka in events or kb in events:
            src, rate = (a, float(a.detach().double().mean()) * sa) if ka in events else \
                (b, float(b.detach().double().mean()) * sb)
        else:
            ra, rb = _mean_abs(a), _mean_abs(b)
            src, rate = (a, ra) if ra <= rb else (b, rb)
        self._charge(row, f"{ka} x {kb}", dense, src, exact, rate)

    def _sdpa(self, args, kwargs, out):
        q, k, v = args[:3]
        L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
        batch = q.numel() // (L * E)
        scale = kwargs.get("scale") or 1.0 / math.sqrt(E)
        attn = torch.softmax((q @ k.transpose(-2, -1)).float() * scale, dim=-1)
        for a, b, dense in ((q, k.transpose(-2, -1), batch * L * S * E), (attn, v, batch * L * S * Ev)):
            row = self._row("sdpa", False)
            row.steps = max(row.steps, self._steps(q))
            self._pair(row, a, b, float(dense))
        if self.keep_attention:
            self.attention[self._row_name_current("sdpa")] = attn.detach()

    def _row_name_current(self, op):
        frame = self.stack[-1] if self.stack else _Frame("", None)
        return f"{frame.name}.{op}" if frame.name else op

    def _attention(self, name, a, b, out):
        """Token-token attention maps: Q K^T itself, or recovered as Q @ K^T from a re-associated Q (K^T V)."""
        prev = self._prev
        if prev is not None and b is prev[0] and a.dim() >= 2 and prev[1].dim() >= 2 \
                and a.shape[-1] == prev[1].shape[-2] and prev[1].shape[-1] == a.shape[-2]:
            with torch.no_grad():
                self.attention[name] = (a.detach() @ prev[1].detach())
        elif prev is not None and a is prev[0] and out.dim() >= 2 and prev[0].shape[-1] == prev[0].shape[-2]:
            self.attention[prev[2]] = prev[0].detach()
        self._prev = (out, a, name)


def _conv_fanout(x, w, groups, params) -> float:
    """``sum(conv(|x|, ones_like(W)))``: every input event times the outputs it reaches (padding costs nothing)."""
    d = x.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    xs = x.detach().abs().double()
    shp = xs.shape
    xs = xs.reshape(shp[0], groups, shp[1] // groups, *shp[2:]).sum(2)
    ones = torch.ones((groups, 1, *w.shape[2:]), dtype=torch.float64, device=x.device)
    kw = {k: params[k] for k in ("stride", "padding", "dilation") if k in params}
    with torch.no_grad():
        occ = conv(xs, ones, None, groups=groups, **kw)
    return float(occ.sum()) * (w.shape[0] // groups)


# ---------------------------------------------------------------------------------------------------------------
# neurons
# ---------------------------------------------------------------------------------------------------------------
class _NeuronWatch:
    def __init__(self, T: int, B: int, record: Optional[set]):
        self.T, self.B, self.record = T, B, record
        self.acc: dict[str, dict] = {}
        self.spikes: dict[str, torch.Tensor] = {}
        self.first_T: Optional[int] = None

    def hook(self, name, module, inp, out, forced: bool):
        if not torch.is_tensor(out) or out.dim() < 2:
            return
        if not forced:
            x = inp[0] if inp and torch.is_tensor(inp[0]) else None
            if x is None or _is_binary(x) or not _is_binary(out) or (self.T > 1 and out.shape[0] != self.T):
                return
        T = out.shape[0]
        if self.first_T is None:
            self.first_T = T
        o = out.detach()
        a = self.acc.setdefault(name, {"module": type(module).__name__, "T": T, "sum": torch.zeros(T, dtype=torch.float64),
                                       "numel": 0})
        if a["T"] != T:
            return
        events = o * module.norm if isinstance(module, IntegerLIF) and module.norm else o  # counts, not count/norm
        a["sum"] += events.reshape(T, -1).double().sum(1).cpu()
        a["numel"] += o[0].numel()
        if self.record is not None and (not self.record or name in self.record) and name not in self.spikes:
            self.spikes[name] = o.cpu()

    def rows(self) -> list[NeuronRow]:
        out = []
        for name, a in self.acc.items():
            per_step = a["numel"]
            rates = (a["sum"] / max(per_step, 1)).tolist()
            out.append(NeuronRow(name=name, module=a["module"], T=a["T"], rates=rates, neurons=per_step / self.B,
                                 spikes=float(a["sum"].sum()) / self.B))
        return out


# ---------------------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------------------
def _batch_size(inputs) -> int:
    if not torch.is_tensor(inputs):
        raise SpikeformerError("energy_report needs a tensor input: images [B, C, H, W] or frames [T, B, C, H, W]")
    if inputs.dim() == 5:
        return int(inputs.shape[1])
    if inputs.dim() >= 1:
        return int(inputs.shape[0])
    raise SpikeformerError(f"cannot tell the batch size of an input of shape {tuple(inputs.shape)}")


def _model_T(model: nn.Module, inputs: torch.Tensor) -> Optional[int]:
    T = getattr(model, "T", None)
    if isinstance(T, int) and T > 0:
        return T
    if inputs.dim() == 5:
        return int(inputs.shape[0])
    return None


def _cfg_name(model: nn.Module, key: str) -> Optional[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get(key) if isinstance(cfg, dict) else None
    return name or None


def run_watched(model: nn.Module, inputs: torch.Tensor, convention: Union[str, Convention] = "generic",
                record_spikes: Optional[Sequence[str]] = None, keep_attention: bool = False,
                batch_size: Optional[int] = None, binary: bool = False):
    """Run ``model(inputs)`` once under the watchers; returns ``(output, watcher, neuron_watch, T, B)``.
    ``binary=True``: integer-neuron outputs enter every synaptic operation as binary sub-steps
    (:func:`binary_expanded`)."""
    conv = get_convention(convention)
    levels = integer_levels(model)
    if binary and not levels:
        raise SpikeformerError(f"{type(model).__name__} has no integer neurons (IntegerLIF / MultiSpike / NI-LIF); "
                               "binary=True only applies to integer-valued models")
    B = batch_size or _batch_size(inputs)
    T = _model_T(model, inputs)
    if T is None:  # learn T from the first neuron's input in a plain pass
        first: list[int] = []
        hooks = [m.register_forward_pre_hook(lambda m, i: first.append(int(i[0].shape[0])) if not first else None)
                 for m in model.modules() if isinstance(m, (BaseNode, IntegerLIF))]
        try:
            with torch.no_grad():
                model(inputs)
        finally:
            for h in hooks:
                h.remove()
        T = first[0] if first else 1
    names = {id(m): n for n, m in model.named_modules()}
    watcher = _Watcher(conv, T, B, names, keep_attention, levels)
    nw = _NeuronWatch(T, B, None if record_spikes is None else set(record_spikes))
    hooks = []
    for name, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, inp: watcher.push(mod)))
        hooks.append(m.register_forward_hook(lambda mod, inp, out: watcher.pop(mod)))
        forced = isinstance(m, (BaseNode, IntegerLIF))
        if forced or (name and not any(True for _ in m.children())):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, _n=name, _f=forced: nw.hook(_n, mod, inp, out, _f)))
    was_training = model.training
    model.eval()
    try:
        # the official operations: compiled kernels (fused BatchNorm + neuron, spike attention) are invisible to hooks
        with torch.no_grad(), numerics(model, "exact"), watcher:
            if binary:
                with _BinaryExpander(levels):  # inside the watcher: it sees the binary operations
                    out = model(inputs)
            else:
                out = model(inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out, watcher, nw, T, B


def energy_report(model: nn.Module, inputs: torch.Tensor, convention: Union[str, Convention] = "generic",
                  e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ, batch_size: Optional[int] = None,
                  binary: bool = False) -> EnergyReport:
    """Measure SOPs, MACs, energy and firing rates of ``model`` on ``inputs`` (one forward pass, eval mode).

    ``inputs``: a batch of images ``[B, C, H, W]`` or frames ``[T, B, C, H, W]`` (real data gives meaningful firing
    rates). ``convention``: a name of :data:`CONVENTIONS` or a :class:`Convention`. ``e_mac``/``e_ac``: pJ per MAC
    / AC. ``binary=True`` (integer-neuron models): measure the binary-expanded model (:func:`binary_expanded`).
    Returns an :class:`EnergyReport` whose totals are per input sample.
    """
    conv = get_convention(convention)
    _, watcher, nw, T, B = run_watched(model, inputs, conv, batch_size=batch_size, binary=binary)
    rows = list(watcher.rows.values())
    if not rows:
        raise SpikeformerError(f"{type(model).__name__}: no Conv/Linear/matmul ran in the forward pass; "
                               "nothing to count")
    # the stem is the registry's ``first_conv`` (else the first op run); the classifier its ``classifier`` (else
    # the last op run)
    stem = next((r for r in rows if r.name == _cfg_name(model, "first_conv")), rows[0])
    cls = next((r for r in rows if r.name == _cfg_name(model, "classifier")), rows[-1])
    cls_row = cls if conv.classifier == "skip" else None
    for r in rows:
        r.dense_macs = r._dense_b / B
        r.rate = r._rate_num / r._rate_den if r._rate_den else 0.0
        r.inputs = ", ".join(r._kinds)
        sops, macs = r._events / B, r._macs_b / B
        if r is stem and conv.first == "mac":
            sops, macs, r.rate = 0.0, r.dense_macs, 1.0
            r.note = "first layer: MAC"
        if r is stem and conv.first == "skip":
            r.counted, r.note = False, "stem excluded"
        if r is cls_row:
            r.counted, r.note = False, "classifier excluded"
        r.sops, r.macs = sops, macs
        r.energy_mj = (sops * e_ac + (macs * e_mac if conv.mac_energy else 0.0)) * 1e-9
    name = getattr(model, "model_name", None) or type(model).__name__
    return EnergyReport(model=name, convention=conv.name, T=T, samples=B, layers=rows, neurons=nw.rows(),
                        params=sum(p.numel() for p in model.parameters()), e_mac=e_mac, e_ac=e_ac)


def record_spikes(model: nn.Module, inputs: torch.Tensor, layers: Optional[Sequence[str]] = None) -> dict:
    """Spike tensors ``[T, B, ...]`` of the spiking layers (all, or the named ones), from one forward pass."""
    _, _, nw, _, _ = run_watched(model, inputs, record_spikes=list(layers or []))
    if layers:
        missing = [n for n in layers if n not in nw.spikes]
        if missing:
            raise SpikeformerError(f"no spiking layer named {missing[0]!r}.{suggest(missing[0], nw.acc)} "
                                   f"Spiking layers: {', '.join(list(nw.acc)[:8])}...")
    return nw.spikes


def attention_maps(model: nn.Module, inputs: torch.Tensor) -> dict:
    """Token-token attention ``[..., N, N]`` of every attention in the forward pass, keyed by op name.

    Spiking attentions computed as ``Q (K^T V)`` never form ``Q K^T``; it is rebuilt from the two operands.
    ``scaled_dot_product_attention`` gives the softmax map. Maps formed by hand with a softmax between the two
    products are found when the second product's left operand has the map's shape.
    """
    _, watcher, _, _, _ = run_watched(model, inputs, keep_attention=True)
    return watcher.attention


# ---------------------------------------------------------------------------------------------------------------
# integer spikes as binary spikes
# ---------------------------------------------------------------------------------------------------------------
_LINEAR_OPS = {F.linear, *_CONV}


class _BinaryExpander(TorchFunctionMode):
    """Runs each Conv / Linear / matmul whose input holds integer-neuron outputs on its binary expansion.

    The counts ``c = x * scale`` (``0..D``) become D binary sub-steps (sub-step ``j`` fires where ``j < c``,
    :func:`~spikeformer.neurons.expand_integer_spikes`), stacked into the batch dimension; the operation runs on
    those 0/1 inputs without its bias, the D results are summed (:func:`~spikeformer.neurons.sum_substeps`), divided
    by ``scale`` and the bias is added once. The operations are linear in the expanded input, so the result is the
    integer path's up to float summation order. A matmul of two integer inputs expands the operand with fewer events
    (the other one is read as a multiplier, as a weight)."""

    def __init__(self, levels: tuple):
        super().__init__()
        self.levels = levels

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LINEAR_OPS:
            x = args[0]
            found = _integer_scale(x, self.levels) if torch.is_tensor(x) and not _is_binary(x) else None
            if found is not None:
                return self._linear_op(func, found, args, kwargs)
        elif func in _MATMUL:
            a, b = args[0], args[1]
            if func is torch.Tensor.__rmatmul__:
                a, b = b, a
            if torch.is_tensor(a) and torch.is_tensor(b):
                fa = _integer_scale(a, self.levels) if not _is_binary(a) else None
                fb = _integer_scale(b, self.levels) if not _is_binary(b) else None
                if fa is not None and (fb is None or float(a.sum()) * fa[1] <= float(b.sum()) * fb[1]):
                    return self._expanded(fa, a, lambda e: torch.matmul(e, b))
                if fb is not None:
                    return self._expanded(fb, b, lambda e: torch.matmul(a, e))
        return func(*args, **kwargs)

    @staticmethod
    def _expanded(found, x, op):
        D, scale = found
        counts = x * scale if scale != 1.0 else x
        binary = expand_integer_spikes(counts.unsqueeze(0), D)  # [D, *x.shape]: D binary sub-steps
        y = op(binary).sum(0)
        return y / scale if scale != 1.0 else y

    def _linear_op(self, func, found, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        if len(args) > 2:
            bias, args[2] = args[2], None
        else:
            bias = kwargs.pop("bias", None)
        x = args[0]
        D, scale = found
        counts = x * scale if scale != 1.0 else x
        binary = expand_integer_spikes(counts.unsqueeze(0), D).flatten(0, 1)  # sub-steps stacked on dim 0
        y = func(binary, *args[1:], **kwargs)
        y = y.unflatten(0, (D, x.shape[0])).sum(0)
        if scale != 1.0:
            y = y / scale
        if bias is not None:
            y = y + (bias if func is F.linear else bias.view(-1, *([1] * (y.dim() - 2))))
        return y


@contextlib.contextmanager
def binary_expanded(model: nn.Module):
    """Inside the ``with`` block, ``model`` runs as its binary-spike counterpart: every synaptic operation that reads
    the outputs of its integer neurons (I-LIF, MultiSpike, NI-LIF) gets them as D binary sub-steps per time step and
    sums the D results, which is the same next-layer input as the integer path's (up to float summation order). The
    model runs on its exact numerics (the official operations, which the expansion intercepts)."""
    levels = integer_levels(model)
    if not levels:
        raise SpikeformerError(f"{type(model).__name__} has no integer neurons (IntegerLIF / MultiSpike / NI-LIF); "
                               "there is nothing to expand into binary spikes")
    with numerics(model, "exact"), _BinaryExpander(levels):
        yield model
