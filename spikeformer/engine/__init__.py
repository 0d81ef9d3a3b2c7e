"""Training and evaluation: config, loop, checkpoints, distributed."""

from .config import DEFAULTS, build_config
from .evaluate import evaluate_checkpoint
from .train import evaluate, train

__all__ = ["DEFAULTS", "build_config", "evaluate", "evaluate_checkpoint", "train"]
