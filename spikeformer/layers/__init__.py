"""Building blocks shared by several model families."""

from .time import expand_time, seq_apply
from .norm import TokenBN

__all__ = ["expand_time", "seq_apply", "TokenBN"]
