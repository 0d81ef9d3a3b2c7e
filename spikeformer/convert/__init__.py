"""Checkpoint import/export (official checkpoints of each family, our safetensors files) and ANN-to-SNN
conversion (QCFS activations, IF neurons, step-by-step simulation)."""

from ..layers.qcfs import QCFS
from .ann2snn import (ScaledIF, accuracy_over_time, ann_to_snn, ann_variant, iter_simulate, replace_activations,
                      replace_maxpool, reset_snn, set_masking_ratio, simulate)
from .checkpoint import load_checkpoint, load_state_dict_file, save_weights

__all__ = ["load_checkpoint", "load_state_dict_file", "save_weights",
           "QCFS", "ScaledIF", "accuracy_over_time", "ann_to_snn", "ann_variant", "iter_simulate",
           "replace_activations", "replace_maxpool", "reset_snn", "set_masking_ratio", "simulate"]
