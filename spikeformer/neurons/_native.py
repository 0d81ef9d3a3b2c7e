"""Old import path of the compiled CPU kernels, kept so existing imports and patches keep working.

The kernels live in :mod:`spikeformer.kernels.cpu` (build and one binding per operation); every name this module
had is read from, and written to, the module that now defines it.
"""

from __future__ import annotations

from ..kernels._shim import forward_attributes
from ..kernels.cpu import attention as _attention
from ..kernels.cpu import bn_neuron as _bn_neuron
from ..kernels.cpu import build as _build_module
from ..kernels.cpu import neuron as _neuron
from ..kernels.cpu import pool as _pool
from ..kernels.cpu import sparse as _sparse
from ..kernels import params as _params_module

forward_attributes(__name__, {
    _build_module: ["library", "enabled", "build_error", "threads", "_lock", "_lib", "_tried", "_error", "_ABI",
                    "_cache_dir", "_compiler", "_cpu_signature", "_try_flags", "_build"],
    _neuron: ["Params", "supports", "_params", "_dense", "_like", "_v0", "_forward", "forward_no_grad",
              "NativeMultiStep"],
    _bn_neuron: ["bn_inference", "bn_scale_shift", "channel_stats", "NativeBNNeuron", "running_update"],
    _attention: ["ATTENTION_HEAD_DIMS", "NativeSpikeAttention"],
    _sparse: ["sparse_rows", "_compute_weights", "NativeSparseLinear", "NativeSparseConv3x3"],
    _pool: ["NativeMaxPool"],
}, renamed={"_ptr": (_build_module, "ptr"), "_pow2": (_params_module, "is_pow2")})
