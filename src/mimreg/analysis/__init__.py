"""Representation analysis: singular-value spectra, effective rank, and plots."""

from mimreg.analysis.curves import plot_curves
from mimreg.analysis.spectrum import effective_rank, plot_spectrum, singular_values

__all__ = ["effective_rank", "plot_curves", "plot_spectrum", "singular_values"]
