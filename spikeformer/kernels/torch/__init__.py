"""The PyTorch implementation of every kernel operation: runs on any device PyTorch supports, is the fallback of
the other backends, and is the reference the contract tests hold them to (``tests/kernels``)."""

from . import attention, bn_neuron, gates, linear, neuron, pool, sparse

__all__ = ["attention", "bn_neuron", "gates", "linear", "neuron", "pool", "sparse"]
