"""The compiled CPU kernels: one C++ source and one ctypes binding per operation, built together into one shared
library on first use (:mod:`.build`). Each operation's entry point takes the same arguments as its PyTorch
reference (``spikeformer/kernels/torch``) and hands it the calls it cannot run. The token Linear binds oneDNN
through PyTorch's own ops instead (:mod:`.linear`)."""

from . import attention, bf16, bn_neuron, build, gates, linear, lut, neuron, ops, pool, sparse, winograd
from .build import available, build_error

__all__ = ["attention", "available", "bf16", "bn_neuron", "build", "build_error", "gates", "linear", "lut", "neuron", "ops", "pool",
           "sparse", "winograd"]
