"""Closed-form denoisers for known data distributions: the yardstick for sampler accuracy.

For x_t = alpha_t x0 + sigma_t eps and Gaussian (or Gaussian-mixture) data, E[x0 | x_t] is closed-form, so
it can stand in for a perfectly trained network (`analytic_model_fn`) and the exact probability-flow ODE end
point is known: in closed form for a Gaussian (each coordinate moves along x_t = alpha_t mu + sqrt(alpha_t^2
s^2 + sigma_t^2) z with z constant) and by high-accuracy adaptive integration (scipy DOP853) for a mixture.
Used by the tests and by bench/samplers.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ditcore.processes import Process, build_process, prediction_target
from ditcore.samplers.ems import EMS


def _col(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] coefficient -> [B, 1, ...] for x."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(-1, *([1] * (x.dim() - 1))) if c.dim() else c


class GaussianData:
    """x0 ~ N(mean, diag(std^2)) on flat vectors [B, D]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)

    def x0_hat(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t = x] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x - alpha mu)."""
        a, s = _col(alpha, x), _col(sigma, x)
        mu, var = self.mean.to(x), self.std.to(x) ** 2
        return mu + a * var / (a * a * var + s * s) * (x - a * mu)

    def exact_pf_ode(self, x_start: torch.Tensor, process: Process, t_start: float) -> torch.Tensor:
        """Exact clean end point of the PF-ODE started at x_start at time t_start."""
        a, s = process.coefficients(t_start)[:2]
        mu, std = self.mean.to(x_start), self.std.to(x_start)
        z = (x_start - a * mu) / torch.sqrt(a * a * std**2 + s * s)
        return mu + std * z

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples [n, D] (float64)."""
        return self.mean + self.std * torch.randn(n, self.mean.numel(), generator=generator, dtype=torch.float64)


class CorrelatedGaussianData:
    """x0 ~ N(mean, cov) on flat vectors [B, D], full covariance (worked in its eigenbasis cov = Q diag(e) Q^T)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        self.evals, self.evecs = torch.linalg.eigh(self.cov)  # [D], [D, D]
        if float(self.evals.min()) <= 0:
            raise ValueError("covariance must be positive definite")

    def x0_hat(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t = x] = mu + alpha cov (alpha^2 cov + sigma^2 I)^-1 (x - alpha mu)."""
        a, s = _col(alpha, x), _col(sigma, x)
        q, e = self.evecs.to(x), self.evals.to(x)
        w = (x - a * self.mean.to(x)) @ q  # eigen-coordinates [B, D]
        return self.mean.to(x) + (w * (a * e / (a * a * e + s * s))) @ q.T

    def exact_pf_ode(self, x_start: torch.Tensor, process: Process, t_start: float) -> torch.Tensor:
        """Exact clean end point of the PF-ODE started at x_start at time t_start (each eigen-direction is 1-D)."""
        a, s = process.coefficients(t_start)[:2]
        q, e = self.evecs.to(x_start), self.evals.to(x_start)
        z = ((x_start - a * self.mean.to(x_start)) @ q) / torch.sqrt(a * a * e + s * s)
        return self.mean.to(x_start) + (torch.sqrt(e) * z) @ q.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples [n, D] (float64)."""
        z = torch.randn(n, self.mean.numel(), generator=generator, dtype=torch.float64)
        return self.mean + (torch.sqrt(self.evals) * z) @ self.evecs.T


class GaussianMixtureData:
    """x0 ~ sum_k w_k N(mean_k, std_k^2 I) on flat vectors [B, D]."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, D]
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # [K]
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()  # [K]

    def x0_hat(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] = sum_k pi_k(x) (mu_k + alpha s_k^2 / v_k (x - alpha mu_k)), v_k = alpha^2 s_k^2 + sigma^2."""
        a = torch.as_tensor(alpha, dtype=x.dtype).reshape(-1, 1, 1)  # [B|1, 1, 1]
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1)
        mu = self.means.to(x)[None]  # [1, K, D]
        var0 = (self.stds.to(x) ** 2)[None, :, None]  # [1, K, 1]
        v = a * a * var0 + s * s  # [B, K, 1]
        diff = x[:, None, :] - a * mu  # [B, K, D]
        dim = x.shape[-1]
        logp = (
            torch.log(self.weights.to(x))[None] - 0.5 * (diff**2).sum(-1) / v[..., 0] - 0.5 * dim * torch.log(v[..., 0])
        )
        resp = torch.softmax(logp, dim=1)[..., None]  # [B, K, 1]
        return (resp * (mu + a * var0 / v * diff)).sum(1)  # [B, D]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples [n, D] (float64) and nothing else."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps


def analytic_model_fn(data, process: str | Process, prediction: str) -> Callable[..., torch.Tensor]:
    """model_fn(x_t, t) returning the exact prediction of type `prediction` for `data`."""
    proc = build_process(process)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        t64 = t.to(torch.float64)
        x = x_t.to(torch.float64)
        alpha, sigma = proc.alpha(t64), proc.sigma(t64)
        x0 = data.x0_hat(x, alpha, sigma)
        safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        eps = (x - _col(alpha, x) * x0) / _col(safe_sigma, x)
        return prediction_target(proc, prediction, x0, eps, t64).to(x_t.dtype)

    return model_fn


def reference_pf_ode(
    data, x_start: torch.Tensor, process: str | Process, t_start: float, rtol: float = 1e-10
) -> torch.Tensor:
    """High-accuracy clean end point of the PF-ODE started at x_start at t_start (scipy DOP853).

    Phase 1 integrates dx/dt = alpha' x0_hat + sigma' eps_hat in t down to log-SNR 0; phase 2 integrates the
    EDM form dz/dlambda = x0_hat - z for z = x/alpha (smooth and well scaled near clean data, where
    eps_hat = (x - alpha x0_hat)/sigma loses digits) up to sigma/alpha = e^-16, then takes x0_hat
    there (that last jump is O((sigma/alpha)^2)).
    """
    from scipy.integrate import solve_ivp  # scipy is a ditcore dependency; imported lazily (slow import)

    proc = build_process(process)
    shape = x_start.shape
    x = x_start.to(torch.float64)
    lam_start = float(proc.log_snr(torch.tensor(float(t_start), dtype=torch.float64)))
    if lam_start < 0.0:
        t_mid = float(proc.t_from_log_snr(torch.tensor(0.0, dtype=torch.float64)))

        def rhs_t(t: float, y: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(y).reshape(shape)
            a, s, da, ds = proc.coefficients(t)
            x0 = data.x0_hat(xt, torch.tensor(a, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
            return (da * x0 + ds * (xt - a * x0) / s).reshape(-1).numpy()

        sol = solve_ivp(rhs_t, (float(t_start), t_mid), x.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=rtol)
        if not sol.success:
            raise RuntimeError(f"reference integration (t phase) failed: {sol.message}")
        a, s = proc.coefficients(t_mid)[:2]
        x = torch.from_numpy(sol.y[:, -1]).reshape(shape)
        lam_start = math.log(a / s)
    else:
        a, s = proc.coefficients(float(t_start))[:2]
    z0 = (x / a).reshape(-1).numpy()  # EDM variable z = x / alpha; the end point depends on the path only via lambda

    def vp(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        sig = 1.0 / math.sqrt(1.0 + math.exp(2.0 * lam))  # any (alpha, sigma) with this lambda gives the same x0_hat
        return torch.tensor(math.exp(lam) * sig, dtype=torch.float64), torch.tensor(sig, dtype=torch.float64)

    def rhs_lam(lam: float, z: np.ndarray) -> np.ndarray:
        a_l, s_l = vp(lam)
        zt = torch.from_numpy(z).reshape(shape)
        return (data.x0_hat(zt * a_l, a_l, s_l) - zt).reshape(-1).numpy()  # dz/dlambda = x0_hat - z

    lam_end = 16.0
    sol = solve_ivp(rhs_lam, (lam_start, lam_end), z0, method="DOP853", rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"reference integration (log-SNR phase) failed: {sol.message}")
    a_l, s_l = vp(lam_end)
    return data.x0_hat(torch.from_numpy(sol.y[:, -1]).reshape(shape) * a_l, a_l, s_l)


def gaussian_ems(data: GaussianData | CorrelatedGaussianData, lambdas: torch.Tensor) -> EMS:
    """Closed-form DPM-Solver-v3 statistics of the exact denoiser of Gaussian data (ditcore/samplers/ems.py).

    With y = x/alpha ~ N(mu, P), P = cov + rho I, rho = e^{-2 lambda}: x0_hat = mu + K (y - mu), K = cov P^-1, so
    l = diag(I - K) and, along the ODE (dy/dlambda = -(I - K)(y - mu), dK/dlambda = 2 rho cov P^-2 =: K'),
    f = A (y - mu) - l mu and f^(1) = A1 (y - mu) - l' mu with A = (I - K) - diag(l),
    A1 = -K' - (I - K)^2 - diag(l') + diag(l)(I - K), l' = -diag(K'). Then Var f = diag(A P A^T),
    Cov(f^(1), f) = diag(A1 P A^T), s = Cov / Var (0 where f does not vary: any diagonal covariance),
    b = E f^(1) - s E f.
    """
    lam = torch.as_tensor(lambdas, dtype=torch.float64)
    if isinstance(data, GaussianData):  # diagonal: l = rho / (v + rho), l' = -2 rho v / (v + rho)^2, s = 0
        rho, var = torch.exp(-2.0 * lam)[:, None], (data.std**2)[None]
        l_lam, dl = rho / (var + rho), -2.0 * rho * var / (var + rho) ** 2
        return EMS(lambdas=lam, l=l_lam, s=torch.zeros_like(l_lam), b=-dl * data.mean)
    mean, cov = data.mean, data.cov
    eye = torch.eye(mean.numel(), dtype=torch.float64)
    ls, ss, bs = [], [], []
    for rho in torch.exp(-2.0 * lam).tolist():
        p_inv = torch.linalg.inv(cov + rho * eye)
        i_k = rho * p_inv  # I - K
        dk = 2.0 * rho * cov @ p_inv @ p_inv
        l_lam, dl = torch.diagonal(i_k), -torch.diagonal(dk)
        a = i_k - torch.diag(l_lam)
        a1 = -dk - i_k @ i_k - torch.diag(dl) + torch.diag(l_lam) @ i_k
        p = cov + rho * eye
        var_f = torch.diagonal(a @ p @ a.T)
        cov_f = torch.diagonal(a1 @ p @ a.T)
        varies = var_f > 1e-12 * (var_f + (l_lam * mean) ** 2 + 1e-300)
        s = torch.where(varies, cov_f / torch.where(varies, var_f, torch.ones_like(var_f)), torch.zeros_like(var_f))
        ls.append(l_lam)
        ss.append(s)
        bs.append(-dl * mean + s * l_lam * mean)
    return EMS(lambdas=lam, l=torch.stack(ls), s=torch.stack(ss), b=torch.stack(bs))
