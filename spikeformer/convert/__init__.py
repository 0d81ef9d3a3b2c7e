"""Checkpoint import/export (official checkpoints of each family, our safetensors files)."""

from .checkpoint import load_checkpoint, load_state_dict_file, save_weights

__all__ = ["load_checkpoint", "load_state_dict_file", "save_weights"]
