"""Building blocks shared by several model families."""

from .time import expand_time, seq_apply
from .attention import spike_attention
from .norm import TokenBN

__all__ = ["expand_time", "seq_apply", "spike_attention", "TokenBN"]
