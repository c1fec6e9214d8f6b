"""Scaling-law fits: saturating power laws with profile intervals, compute frontier, isoFLOP N*/D*, L(N, D), arms."""

from ditcore.scaling.arms import compare_arms
from ditcore.scaling.diagnostics import SupportCriteria, fit_diagnostics
from ditcore.scaling.frontier import (
    compute_frontier,
    fit_frontier_law,
    fit_parabola,
    images_of,
    interior_count,
    isoflop_analysis,
    minimum_kind,
)
from ditcore.scaling.loss_surface import fit_loss_surface
from ditcore.scaling.powerlaw import (
    FitError,
    PowerLawFit,
    fit_fid_law,
    fit_loss_law,
    fit_power_law,
    held_out_check,
    profile_intervals,
)

__all__ = [
    "FitError",
    "PowerLawFit",
    "compare_arms",
    "compute_frontier",
    "SupportCriteria",
    "fit_diagnostics",
    "fit_fid_law",
    "fit_frontier_law",
    "fit_loss_law",
    "fit_loss_surface",
    "fit_parabola",
    "fit_power_law",
    "held_out_check",
    "images_of",
    "isoflop_analysis",
    "interior_count",
    "minimum_kind",
    "profile_intervals",
]
