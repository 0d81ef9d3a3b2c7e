"""The compiled CPU kernels: one C++ source and one ctypes binding per operation, built together into one shared
library on first use (:mod:`.build`). Each operation's entry point takes the same arguments as its PyTorch
reference (``spikeformer/kernels/torch``) and hands it the calls it cannot run. The token Linear binds oneDNN
through PyTorch's own ops instead (:mod:`.linear`), and fp32 products of spikes on AMX tiles call MKL's bf16 GEMM
(:mod:`.split`)."""

from . import attention, bf16, bn_neuron, build, gates, linear, lut, neuron, ops, pool, sparse, split, winograd
from .build import available, build_error

__all__ = ["attention", "available", "bf16", "bn_neuron", "build", "build_error", "gates", "linear", "lut", "neuron", "ops", "pool",
           "sparse", "split", "winograd"]
