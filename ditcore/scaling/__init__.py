"""Scaling-law fits: saturating power laws with bootstrap intervals, compute frontier, isoFLOP analysis."""
from ditcore.scaling.frontier import compute_frontier, fit_parabola, isoflop_analysis
from ditcore.scaling.powerlaw import (
    FitError,
    PowerLawFit,
    fit_fid_law,
    fit_loss_law,
    fit_power_law,
    held_out_check,
)

__all__ = [
    "FitError", "PowerLawFit", "compute_frontier", "fit_fid_law", "fit_loss_law", "fit_parabola",
    "fit_power_law", "held_out_check", "isoflop_analysis",
]
