"""Building blocks shared by several model families."""

from .time import expand_time, seq_apply
from .attention import spike_attention
from .norm import TokenBN
from .fused_bn import bn_neuron, linear_bn_neuron
from .numerics import NUMERICS, NumericsAware, numerics_of, set_numerics, wants_fast
from .linear import OneDNNLinear, TokenLinear, use_exact_kernels, use_exact_linear, use_fast_kernels, use_onednn_linear

__all__ = ["NUMERICS", "NumericsAware", "numerics_of", "set_numerics", "wants_fast", "TokenLinear", "expand_time", "seq_apply", "spike_attention", "TokenBN", "bn_neuron", "linear_bn_neuron", "OneDNNLinear",
           "use_onednn_linear", "use_exact_linear", "use_fast_kernels", "use_exact_kernels"]
