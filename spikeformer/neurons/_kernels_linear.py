"""Old import path of the oneDNN token Linear, now :mod:`spikeformer.kernels.cpu.linear`; its names are read from,
and written to, that module."""

from __future__ import annotations

from ..kernels._shim import forward_attributes
from ..kernels.cpu import linear as _linear

forward_attributes(__name__, {_linear: ["_dnnl", "_mm", "_DnnlLinear", "_usable", "token_linear"]})
