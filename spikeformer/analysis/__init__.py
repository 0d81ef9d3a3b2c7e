"""Analysis: energy / SOPs / firing rates from one forward pass, image metrics (PSNR, SSIM), plots, and the HTML
run report."""

from .energy import (CONVENTIONS, Convention, EnergyReport, NeuronRow, OpRow, attention_maps, binary_expanded,
                     energy_report, get_convention, integer_levels, record_spikes)
from .image_metrics import psnr, ssim

__all__ = ["CONVENTIONS", "Convention", "EnergyReport", "NeuronRow", "OpRow", "attention_maps", "binary_expanded",
           "energy_report", "get_convention", "integer_levels", "psnr", "record_spikes", "ssim"]
