"""Sampling time grids: uniform-t, uniform-lambda (log-SNR), EDM rho-grid and the SD3 shifted grid.

A grid for `steps` steps is a float64 tensor of steps + 1 strictly decreasing times that starts at the
start time (pure noise, normally process.t_max) and ends at process.t_clean (sigma = 0). Samplers evaluate
the model at the first `steps` points; the last interval always ends on clean data, which the ODE solvers
take as the x0 prediction ("denoise to zero", as ADM's DDIM, EDM's sampler and diffusers' final_sigmas_type="zero"
do; DPM-Solver-v3 and the SDE sampler have their own last steps).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from ditcore.processes import Process

TIME_GRIDS = ("default", "uniform-t", "uniform-lambda", "edm", "sd3-shift")
# Exponential-integrator samplers whose "default" grid is uniform in log-SNR where the log-SNR range is finite
LOG_SNR_DEFAULT_SAMPLERS = ("dpmpp-2m", "dpmpp-3m", "dpmpp-2s", "dpmsolver-v3")
EDM_SIGMA_MIN = 0.002  # EDM (Karras et al. 2022) noise-to-signal range sigma/alpha
EDM_SIGMA_MAX = 80.0


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """Process coefficients at one grid time (python floats, float64)."""

    t: float
    alpha: float
    sigma: float
    d_alpha: float
    d_sigma: float
    log_snr: float  # -inf at pure noise (alpha = 0), +inf at clean (sigma = 0)


def grid_point(process: Process, t: float) -> GridPoint:
    """Coefficients of `process` at time t."""
    a, s, da, ds = process.coefficients(t)
    a, s = max(a, 0.0), max(s, 0.0)  # -0.0 from sqrt at the clean end
    lam = math.inf if s == 0 else (-math.inf if a == 0 else math.log(a) - math.log(s))
    return GridPoint(t=float(t), alpha=a, sigma=s, d_alpha=da, d_sigma=ds, log_snr=lam)


def time_shift(u: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 shift u' = s u / (1 + (s - 1) u) (s > 1 spends more steps at high noise)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def _sigma_edm(process: Process, t: float) -> float:
    """EDM noise level sigma_t / alpha_t = exp(-lambda_t)."""
    lam = float(process.log_snr(torch.tensor(t, dtype=torch.float64)))
    return math.exp(-lam) if lam > -math.inf else math.inf


def default_grid_kind(process: Process, sampler: str) -> str:
    """What time_grid="default" means for `sampler` on `process`: "uniform-lambda", "edm" or "uniform-t".

    The DPM-Solver family integrates in log-SNR, so it gets the grid uniform in lambda (DPM-Solver's "logSNR"
    steps, Lu et al. 2022) when lambda(t_max) is finite (vp-linear, edm-ve). On paths that start at pure noise
    (alpha = 0: flow, sit-*, vp-cosine) a log-SNR grid needs the arbitrary EDM start sigma/alpha = 80, and
    uniform-t is as good or better there (docs/samplers.md). Every other sampler uses uniform-t, except on a
    variance-exploding path (alpha = 1 throughout: edm-ve), where uniform t is uniform sigma: its last step would
    jump from sigma = sigma_max/steps (4.4 at 18 steps) straight to the denoised mean, and every sample would
    shrink towards the data mean. There they get EDM's own Karras grid ("edm", rho = 7).
    """
    lam_start = float(process.log_snr(torch.tensor(float(process.t_max), dtype=torch.float64)))
    if sampler in LOG_SNR_DEFAULT_SAMPLERS and math.isfinite(lam_start):
        return "uniform-lambda"
    if process.coefficients(float(process.t_max))[0] == 1.0:  # alpha = 1 at the noisiest time: variance exploding
        return "edm"
    return "uniform-t"


def custom_grid(process: Process, times: torch.Tensor | list[float], *, t_start: float | None = None) -> torch.Tensor:
    """Validate explicit sampling times: strictly decreasing, from t_start (default the first time) to t_clean."""
    ts = torch.as_tensor(times, dtype=torch.float64).flatten()
    if ts.numel() < 2:
        raise ValueError(f"a custom time grid needs at least 2 times, got {ts.numel()}")
    if not bool(torch.all(ts[1:] < ts[:-1])):
        raise ValueError("a custom time grid must be strictly decreasing")
    if t_start is not None and abs(float(ts[0]) - float(t_start)) > 1e-12:
        raise ValueError(f"a custom time grid must start at t_start={t_start}, got {float(ts[0])}")
    if float(ts[0]) > process.t_max or abs(float(ts[-1]) - process.t_clean) > 1e-12:
        raise ValueError(
            f"a custom time grid must lie in [t_clean={process.t_clean}, t_max={process.t_max}] and end "
            f"at t_clean, got {float(ts[0])} .. {float(ts[-1])}"
        )
    ts[-1] = process.t_clean
    return ts


def time_grid(
    process: Process,
    steps: int,
    kind: str = "default",
    *,
    t_start: float | None = None,
    shift: float = 3.0,
    rho: float = 7.0,
    sigma_min: float = EDM_SIGMA_MIN,
    sigma_max: float = EDM_SIGMA_MAX,
    sampler: str | None = None,
) -> torch.Tensor:
    """Decreasing float64 times [steps + 1] from t_start (default process.t_max) to process.t_clean.

    kinds: "default" (= default_grid_kind(process, sampler); uniform-t without a sampler), "uniform-t",
    "sd3-shift" (uniform then SD3 shift `shift`), "uniform-lambda"
    (uniform in log-SNR, DPM-Solver), "edm" (Karras rho-spacing of sigma/alpha, `rho`). The log-SNR grids
    span sigma/alpha from the level at t_start down to max(sigma_min, level at t_min); when the start is pure
    noise (alpha = 0, lambda = -inf) the start time is kept as an extra first point and the ramp starts at
    sigma_max.
    """
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:  # np.int64 is one; True not
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    if kind not in TIME_GRIDS:
        raise ValueError(f"unknown time_grid {kind!r}; expected one of {', '.join(TIME_GRIDS)}")
    t_hi = float(process.t_max if t_start is None else t_start)
    t_end = float(process.t_clean)
    if not t_end < t_hi <= process.t_max:
        raise ValueError(f"t_start must be in ({t_end}, {process.t_max}], got {t_hi}")
    if kind == "default":
        kind = default_grid_kind(process, sampler) if sampler is not None else "uniform-t"
    if kind == "uniform-t":
        return torch.linspace(t_hi, t_end, steps + 1, dtype=torch.float64)
    if kind == "sd3-shift":
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"grid shift must be a finite number > 0, got {shift!r}")
        u = time_shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
        return t_end + u * (t_hi - t_end)
    # log-SNR based grids ("uniform-lambda", "edm")
    s_hi = _sigma_edm(process, t_hi)
    s_lo = max(sigma_min, _sigma_edm(process, process.t_min))
    lead: list[float] = []
    count = steps  # noisy points placed by the spacing rule
    if math.isinf(s_hi):  # pure noise (alpha = 0): keep the exact start, then the sigma_max..sigma_min ramp
        lead, s_hi, count = [t_hi], sigma_max, steps - 1
    if count == 0:
        return torch.tensor(lead + [t_end], dtype=torch.float64)
    if not s_lo < s_hi:
        raise ValueError(f"empty noise range: sigma_min={s_lo} >= sigma_max={s_hi} for process {process.name!r}")
    if kind == "uniform-lambda":
        lam = torch.linspace(-math.log(s_hi), -math.log(s_lo), count, dtype=torch.float64)
    else:
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
        ramp = torch.linspace(0.0, 1.0, count, dtype=torch.float64)
        sig = (s_hi ** (1 / rho) + ramp * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
        lam = -torch.log(sig)
    ts = process.t_from_log_snr(lam)
    if not lead and count >= 1:
        ts[0] = t_hi  # exact start time (the inverse is only accurate to ~1e-10 for vp-linear)
    return torch.cat([torch.tensor(lead, dtype=torch.float64), ts, torch.tensor([t_end], dtype=torch.float64)])
