"""Forward noising processes x_t = alpha_t * x_0 + sigma_t * eps on continuous time t in [0, 1].

t = 0 is data, t = 1 is noise, the one time convention of models, losses and samplers. Every process exposes the same
small interface used by the objectives (training targets) and the samplers (ODE/SDE coefficients):

    alpha(t), sigma(t), d_alpha(t), d_sigma(t), log_snr(t) = log(alpha_t / sigma_t), t_from_log_snr(lam),
    t_min, t_max, t_clean (the time where sigma = 0, which samplers end on), name.

All coefficient functions take a float tensor of any shape and return a tensor of the same shape and
dtype; internally they compute in float64 so that float32 callers do not lose the small-sigma end.

PROCESS_NAMES are the interpolants that end at (near) pure noise, alpha_1 ~ 0; VP_PROCESS_NAMES are those with
alpha^2 + sigma^2 = 1 (the ones with a DDPM chain, see ditcore.vlb). "edm-ve" is EDM's variance-exploding form:
alpha = 1 and sigma runs from 0 to sigma_max = 80, so its t = 1 is noise of std ~80, not unit-variance noise.

Prediction-type conversions (`to_x0_eps`, `prediction_target`) live here too because they are pure
functions of (alpha_t, sigma_t, d_alpha_t, d_sigma_t) and are shared by the loss and every sampler.
"""

from __future__ import annotations

import math

import torch

PREDICTIONS = ("eps", "v", "x0", "velocity")
PROCESS_NAMES = ("vp-linear", "vp-cosine", "flow", "sit-linear", "sit-gvp")  # interpolants, data -> (near) noise
VP_PROCESS_NAMES = ("vp-linear", "vp-cosine", "sit-gvp")  # alpha_t^2 + sigma_t^2 = 1
VE_PROCESS_NAMES = ("edm-ve",)  # alpha_t = 1, sigma_t grows to sigma_max (EDM's formulation)
ALL_PROCESS_NAMES = PROCESS_NAMES + VE_PROCESS_NAMES


def _f64(t: torch.Tensor | float) -> torch.Tensor:
    """Promote to a float64 tensor (coefficients near sigma = 0 need the precision)."""
    return torch.as_tensor(t, dtype=torch.float64)


def _out(value: torch.Tensor, like: torch.Tensor | float) -> torch.Tensor:
    """Cast a float64 result back to the caller's dtype/device (float64 for python floats)."""
    if isinstance(like, torch.Tensor) and like.is_floating_point():
        return value.to(dtype=like.dtype, device=like.device)
    return value


class Process:
    """Shared helpers for a process given alpha/sigma and their time derivatives (subclasses)."""

    name: str = ""
    t_min: float = 0.0
    t_max: float = 1.0
    t_clean: float = 0.0  # time where sigma_t = 0 (alpha_t = 1); samplers end here

    # ---- subclasses implement these four in float64 ------------------------------------------
    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- public interface ------------------------------------------------------------------------
    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale alpha_t."""
        return _out(self._alpha(_f64(t)), t)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale sigma_t."""
        return _out(self._sigma(_f64(t)), t)

    def d_alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """d alpha_t / dt."""
        return _out(self._d_alpha(_f64(t)), t)

    def d_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """d sigma_t / dt."""
        return _out(self._d_sigma(_f64(t)), t)

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """lambda_t = log(alpha_t / sigma_t); -inf where alpha = 0, +inf where sigma = 0."""
        t64 = _f64(t)
        return _out(torch.log(self._alpha(t64)) - torch.log(self._sigma(t64)), t)

    def t_from_log_snr(self, lam: torch.Tensor | float) -> torch.Tensor:
        """Inverse of log_snr (lambda is strictly decreasing in t); clamped to [t_clean, t_max]."""
        t = self._t_from_log_snr(_f64(lam))
        return _out(t.clamp(min(self.t_clean, self.t_min), self.t_max), lam)

    def coefficients(self, t: float) -> tuple[float, float, float, float]:
        """(alpha, sigma, d_alpha, d_sigma) at a scalar time, as python floats (float64)."""
        t64 = _f64(t)
        return (
            float(self._alpha(t64)),
            float(self._sigma(t64)),
            float(self._d_alpha(t64)),
            float(self._d_sigma(t64)),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class VPLinearProcess(Process):
    """DiT/ADM variance-preserving process: betas linear from 1e-4 to 0.02 over 1000 steps.

    The discrete cumulative product alpha_bar_i = prod_{j<=i} (1 - beta_j) with beta_j = b0 + d*j has
    the closed form  prod_{j=0}^{i} d*(a - j) = d^(i+1) * Gamma(a+1) / Gamma(a-i),  a = (1-b0)/d.
    Using lgamma extends it *exactly* (it matches every discrete step) and smoothly (analytic, so ODE
    solvers see their full order) to a continuous index tau = t * 999. At tau = -1 the formula gives
    alpha_bar = 1 exactly; that is `t_clean`, the clean end point (the ADM DDIM "alpha_bar_prev = 1").
    """

    def __init__(
        self,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_steps: int = 1000,
        name: str = "vp-linear",
    ) -> None:
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"vp-linear: need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.name = name
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.num_steps = num_steps
        self.scale = float(num_steps - 1)  # tau = t * 999: the discrete DiT index of continuous t
        self._d = (beta_end - beta_start) / (num_steps - 1)
        self._a = (1.0 - beta_start) / self._d
        self._log_d = math.log(self._d)
        self._lgamma_a1 = math.lgamma(self._a + 1.0)
        self.t_clean = -1.0 / self.scale

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_bar at continuous time t (float64)."""
        tau = _f64(t) * self.scale
        return (tau + 1.0) * self._log_d + self._lgamma_a1 - torch.lgamma(self._a - tau)

    def _d_log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        tau = t * self.scale
        return self.scale * (self._log_d + torch.digamma(self._a - tau))

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        # 1 - alpha_bar via expm1: keeps relative precision where alpha_bar ~ 1 (sigma ~ 0.01 at t=0).
        return torch.sqrt((-torch.expm1(self.log_alpha_bar(t))).clamp_min(0.0))

    def _d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self._alpha(t) * self._d_log_alpha_bar(t)

    def _d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        # sigma^2 = 1 - alpha_bar  =>  2 sigma sigma' = -alpha_bar * (log alpha_bar)'
        alpha_bar = torch.exp(self.log_alpha_bar(t))
        return -alpha_bar * self._d_log_alpha_bar(t) / (2.0 * self._sigma(t))

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """lambda_t = 0.5 * (log alpha_bar - log(1 - alpha_bar))."""
        lab = self.log_alpha_bar(_f64(t))
        return _out(0.5 * (lab - torch.log(-torch.expm1(lab))), t)

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        # alpha_bar = sigmoid(2 lambda); log alpha_bar is strictly decreasing in tau: bisection in float64
        # (60 halvings of [-1, 999] reach float64 resolution; cheap next to any model call).
        target = -torch.nn.functional.softplus(-2.0 * lam)
        lo = torch.full_like(lam, -1.0)
        hi = torch.full_like(lam, self.scale)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            too_clean = self.log_alpha_bar(mid / self.scale) > target  # still above target -> go noisier
            lo = torch.where(too_clean, mid, lo)
            hi = torch.where(too_clean, hi, mid)
        tau = 0.5 * (lo + hi)
        tau = torch.where(torch.isposinf(lam), torch.full_like(lam, -1.0), tau)
        return tau / self.scale


class VPCosineProcess(Process):
    """Improved-DDPM cosine schedule in continuous time: alpha_t = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))."""

    def __init__(self, s: float = 0.008, name: str = "vp-cosine") -> None:
        self.name = name
        self.s = s
        self._c = math.pi / 2.0 / (1.0 + s)
        self._norm = math.sin(self._c)  # = cos(pi/2 * s/(1+s))

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        # cos(pi/2 (t+s)/(1+s)) == sin(c (1-t)): exactly 0 at t=1 and exactly 1 at t=0.
        return torch.sin(self._c * (1.0 - t)) / self._norm

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        a = self._alpha(t)
        return torch.sqrt(((1.0 - a) * (1.0 + a)).clamp_min(0.0))

    def _d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -self._c * torch.cos(self._c * (1.0 - t)) / self._norm

    def _d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        # alpha^2 + sigma^2 = 1  =>  sigma' = -alpha alpha' / sigma
        return -self._alpha(t) * self._d_alpha(t) / self._sigma(t)

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        alpha = torch.sqrt(torch.sigmoid(2.0 * lam))
        return 1.0 - torch.asin((alpha * self._norm).clamp(0.0, 1.0)) / self._c


class FlowProcess(Process):
    """Rectified flow / SiT linear interpolant: x_t = (1 - t) x_0 + t eps (SD3, SiT "Linear")."""

    def __init__(self, name: str = "flow") -> None:
        self.name = name

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    def _d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -1.0)

    def _d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-lam)


class GVPProcess(Process):
    """SiT generalised variance-preserving interpolant: alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2)."""

    def __init__(self, name: str = "sit-gvp") -> None:
        self.name = name

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * (1.0 - t))  # == cos(pi t/2), exactly 0 at t=1

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * t)

    def _d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def _d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.atan(torch.exp(-lam)) * (2.0 / math.pi)


class EDMVEProcess(Process):
    """EDM's variance-exploding process (Karras et al. 2022, Table 1): alpha_t = 1, sigma_t = sigma_max * t.

    EDM integrates in sigma itself (sigma(t) = t); here time is that sigma divided by sigma_max so that t stays in
    [0, 1] like every other process. The map is linear, so Euler/Heun steps in t are exactly the EDM steps in sigma,
    and the "edm" time grid (which places sigma/alpha = sigma) is EDM's rho-spaced grid.
    """

    def __init__(self, sigma_max: float = 80.0, name: str = "edm-ve") -> None:
        if not sigma_max > 0:
            raise ValueError(f"edm-ve: sigma_max must be > 0, got {sigma_max}")
        self.name = name
        self.sigma_max = float(sigma_max)

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_max * t

    def _d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def _d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.sigma_max)

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        return torch.exp(-lam) / self.sigma_max  # lambda = -log sigma


def build_process(name: str | Process) -> Process:
    """Process by name: "vp-linear", "vp-cosine", "flow", "sit-linear", "sit-gvp", "edm-ve" (instances pass through)."""
    if isinstance(name, Process):
        return name
    if name == "vp-linear":
        return VPLinearProcess()
    if name == "vp-cosine":
        return VPCosineProcess()
    if name == "flow":
        return FlowProcess("flow")
    if name == "sit-linear":
        return FlowProcess("sit-linear")  # SiT's Linear path is the same interpolant as rectified flow
    if name == "sit-gvp":
        return GVPProcess()
    if name == "edm-ve":
        return EDMVEProcess()
    raise ValueError(f"unknown process {name!r}; expected one of {', '.join(ALL_PROCESS_NAMES)}")


def _bcast(c: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Coefficient [B] (or scalar) -> shape [B, 1, ...] in x's dtype for broadcasting against x."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))


def check_prediction(prediction: str) -> str:
    """Validate a prediction type name."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
    return prediction


def prediction_target(
    process: Process, prediction: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Regression target for a prediction type: eps, x0, v = alpha eps - sigma x0, velocity = dx_t/dt."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    a, s = _bcast(process.alpha(t), x0), _bcast(process.sigma(t), x0)
    if prediction == "v":  # Salimans & Ho 2022
        return a * eps - s * x0
    da, ds = _bcast(process.d_alpha(t), x0), _bcast(process.d_sigma(t), x0)
    return da * x0 + ds * eps  # probability-flow velocity of the interpolant (SiT / rectified flow)


def to_x0_eps(
    process: Process, prediction: str, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model prediction at (x_t, t) into the pair (x0_hat, eps_hat) with x_t = alpha x0 + sigma eps."""
    check_prediction(prediction)
    a, s = _bcast(process.alpha(t), x_t), _bcast(process.sigma(t), x_t)
    if prediction == "eps":
        if bool((a == 0).any()):
            raise ValueError(
                f"eps-prediction cannot recover x0 where alpha_t = 0 (process {process.name!r} at its t_max); "
                "start sampling below t_max"
            )
        return (x_t - s * pred) / a, pred
    if prediction == "x0":
        return pred, (x_t - a * pred) / s
    if prediction == "v":
        norm = a * a + s * s  # = 1 for VP processes; kept general for non-VP paths
        return (a * x_t - s * pred) / norm, (s * x_t + a * pred) / norm
    da, ds = _bcast(process.d_alpha(t), x_t), _bcast(process.d_sigma(t), x_t)
    det = a * ds - s * da  # > 0 for every process here: alpha decreases while sigma increases
    return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det
