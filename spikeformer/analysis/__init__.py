"""Analysis: energy / SOPs / firing rates from one forward pass, plots, and the HTML run report."""

from .energy import (CONVENTIONS, Convention, EnergyReport, NeuronRow, OpRow, attention_maps, energy_report,
                     get_convention, record_spikes)

__all__ = ["CONVENTIONS", "Convention", "EnergyReport", "NeuronRow", "OpRow", "attention_maps", "energy_report",
           "get_convention", "record_spikes"]
