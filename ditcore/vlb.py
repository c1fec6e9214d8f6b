"""The discrete DDPM chain of a VP process, its variational bound and the learned variance of the hybrid loss.

Improved DDPM (Nichol & Dhariwal 2021) trains the reverse variance with L_hybrid = L_simple + lambda L_vlb
(Sec. 3.1) on a discrete chain x_0 -> x_1 -> ... -> x_T. The project's processes are continuous in t, so the
chain is *defined* here by T steps of the process:

    t_i = t_clean + (i / T) (t_max - t_clean),  i = 0..T,   alpha_bar_i = alpha(t_i)^2,
    beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}  (clipped to <= 0.999, Improved DDPM Sec. 3.2).

t_0 = t_clean is clean data (alpha_bar_0 = 1). For "vp-linear" (t_clean = -1/999) t_i = (i - 1)/999 and this is
the ADM/DiT chain with betas linear in [1e-4, 0.02]; at T = 1000 it is built from those betas directly.
"vp-cosine" and "sit-gvp" end at alpha_bar = 0, where beta_T = 1 is clipped to 0.999 as in Improved DDPM; the steps
from the first clipped one on take alpha_bar from the clipped betas and t_i from the process's inverse log-SNR, so
(x_i, t_i) always lies on the process's marginal.

Terms (in bits per dimension, the mean over the non-batch dims divided by ln 2, as ADM reports them):
L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || p_theta(x_{i-1} | x_i)) for i > 1, L_0 = -log p_theta(x_0 | x_1) with the
discretised Gaussian decoder (DDPM Sec. 3.3, 256 bins on [-1, 1]) for i = 1, and the prior L_T =
KL(q(x_T | x_0) || N(0, I)). The reverse variance is Sigma = exp(v log beta_i + (1 - v) log beta_tilde_i)
(Improved DDPM Eq. 15) with v = (o + 1) / 2 for the network's variance output o (ADM's parameterisation, so o = 0
at DiT's zero init is the log-space midpoint).
"""

from __future__ import annotations

import math

import torch

from ditcore.processes import VP_PROCESS_NAMES, Process, VPLinearProcess, build_process

MAX_BETA = 0.999  # Improved DDPM Sec. 3.2: keeps the last step of a schedule that reaches alpha_bar = 0 finite
NUM_BINS = 256  # 8-bit data scaled to [-1, 1] (DDPM Sec. 3.3)
VARIANCES = ("learned", "fixed-small", "fixed-large")  # Sigma = learned, beta_tilde (v = 0), beta (v = 1)


def _col(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ...] in like's dtype/device."""
    return c.to(dtype=like.dtype, device=like.device).reshape(c.shape[0], *([1] * (like.dim() - 1)))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the batch dim: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(1)


class DDPMChain:
    """A discrete DDPM chain given alpha_bar_0..T (alpha_bar_0 = 1) and the process time of each step."""

    def __init__(self, alpha_bar: torch.Tensor, t: torch.Tensor) -> None:
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64)
        if ab.dim() != 1 or ab.shape != t.shape or ab.numel() < 3:
            raise ValueError(f"DDPMChain: need 1-D alpha_bar and t of equal length >= 3, got {ab.shape}, {t.shape}")
        if ab[0] != 1.0 or not bool((ab[1:] < ab[:-1]).all()) or not ab[-1] > 0:
            raise ValueError("DDPMChain: alpha_bar must start at 1 and decrease strictly to a value > 0")
        self.alpha_bar = ab  # [T+1]
        self.t = t  # [T+1]
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])  # alpha_bar_{i-1}; entry 0 unused
        self.beta = 1.0 - ab / ab_prev  # [T+1], beta_0 = 0 (unused)
        one_minus = 1.0 - ab
        one_minus[0] = 1.0  # step 0 has no posterior; keeps the unused entries finite
        # DDPM Eq. 7: q(x_{i-1} | x_i, x_0) = N(coef_x0 x_0 + coef_xt x_i, beta_tilde_i)
        self.beta_tilde = self.beta * (1.0 - ab_prev) / one_minus
        self.coef_x0 = self.beta * torch.sqrt(ab_prev) / one_minus
        self.coef_xt = (1.0 - ab_prev) * torch.sqrt(1.0 - self.beta) / one_minus
        # beta_tilde_1 = 0: ADM clips its log to log beta_tilde_2 (the decoder term at i = 1 uses it).
        clipped = self.beta_tilde.clone()
        clipped[:2] = self.beta_tilde[2]
        self.log_beta_tilde = torch.log(clipped)
        log_beta = torch.log(self.beta.clone())
        log_beta[0] = log_beta[1]
        self.log_beta = log_beta

    @property
    def num_steps(self) -> int:
        """T, the number of noising steps."""
        return self.alpha_bar.numel() - 1

    @classmethod
    def from_process(cls, process: str | Process, num_steps: int = 1000, max_beta: float = MAX_BETA) -> DDPMChain:
        """The chain of `num_steps` equal steps in t of a VP process (module docstring)."""
        proc = build_process(process)
        if proc.name not in VP_PROCESS_NAMES:
            raise ValueError(
                f"the DDPM chain needs a variance-preserving process {VP_PROCESS_NAMES}, got {proc.name!r}"
            )
        if num_steps < 2:
            raise ValueError(f"the DDPM chain needs num_steps >= 2, got {num_steps}")
        i = torch.arange(num_steps + 1, dtype=torch.float64)
        t = (proc.t_clean * (num_steps - i) + proc.t_max * i) / num_steps  # exact at both ends
        if isinstance(proc, VPLinearProcess) and num_steps == proc.num_steps:
            # ADM's own chain, bit for bit: the process's lgamma form carries ~1e-11 absolute error in log alpha_bar,
            # which 1 - alpha_bar_i / alpha_bar_{i-1} would turn into ~1e-7 relative error in beta_1 = 1e-4.
            beta = torch.linspace(proc.beta_start, proc.beta_end, num_steps, dtype=torch.float64)
            return cls(torch.cat([beta.new_ones(1), torch.cumprod(1.0 - beta, 0)]), t)
        ab = proc.alpha(t) ** 2
        ab[0] = 1.0
        raw_beta = 1.0 - ab[1:] / ab[:-1]
        changed = torch.cumsum((raw_beta > max_beta).to(torch.int64), 0) > 0  # steps at/after the first clip
        if bool(changed.any()):
            ab_clipped = torch.cumprod(1.0 - raw_beta.clamp(max=max_beta), 0)
            ab = torch.cat([ab[:1], torch.where(changed, ab_clipped, ab[1:])])
            lam = 0.5 * (torch.log(ab[1:]) - torch.log1p(-ab[1:]))
            t = torch.cat([t[:1], torch.where(changed, proc.t_from_log_snr(lam), t[1:])])
        return cls(ab, t)

    def _at(self, values: torch.Tensor, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[i] as [B, 1, ...] in like's dtype."""
        return _col(values.to(i.device)[i], like)

    def q_sample(self, x0: torch.Tensor, eps: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) eps (DDPM Eq. 4); i: [B] long in 1..T."""
        return self._at(self.alpha_bar.sqrt(), i, x0) * x0 + self._at((1.0 - self.alpha_bar).sqrt(), i, x0) * eps

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{i-1} | x_i, x_0) (DDPM Eq. 7)."""
        return self._at(self.coef_x0, i, x0) * x0 + self._at(self.coef_xt, i, x_t) * x_t

    def posterior_log_variance(self, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """log beta_tilde_i (clipped at i = 1) as [B, 1, ...]."""
        return self._at(self.log_beta_tilde, i, like)

    def model_log_variance(self, out: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """log Sigma = v log beta_i + (1 - v) log beta_tilde_i with v = (out + 1)/2 (Improved DDPM Eq. 15)."""
        v = (out + 1.0) / 2.0
        return v * self._at(self.log_beta, i, out) + (1.0 - v) * self._at(self.log_beta_tilde, i, out)

    def fixed_log_variance(self, variance: str, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """log Sigma of the fixed choices: "fixed-small" = beta_tilde_i, "fixed-large" = beta_i (DDPM Sec. 3.2)."""
        if variance == "fixed-small":
            return self._at(self.log_beta_tilde, i, like).expand_as(like)
        if variance == "fixed-large":
            return self._at(self.log_beta, i, like).expand_as(like)
        raise ValueError(f"unknown fixed variance {variance!r}; expected 'fixed-small' or 'fixed-large'")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_normal_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log P(lo < Z < hi) for Z ~ N(0, 1), lo < hi (either may be infinite), accurate in both tails."""
    # Reflect intervals centred above 0 to below 0: log_ndtr is accurate in the lower tail, and
    # log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))) then loses no digits.
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def discretized_gaussian_log_likelihood(
    x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_bins: int = NUM_BINS
) -> torch.Tensor:
    """Elementwise log P(x0's bin) under N(mean, e^(2 log_scale)); data on num_bins levels in [-1, 1] (nats).

    DDPM Eq. 13: the bin of x is [x - 1/(num_bins-1), x + 1/(num_bins-1)], and the outermost bins extend to
    -inf / +inf. The normal CDF is the exact one (ADM uses a tanh approximation).
    """
    half = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-log_scale)
    lo = torch.where(x0 <= -1.0 + half / 2, torch.full_like(x0, -math.inf), (x0 - half - mean) * inv_std)
    hi = torch.where(x0 >= 1.0 - half / 2, torch.full_like(x0, math.inf), (x0 + half - mean) * inv_std)
    return _log_normal_mass(lo, hi)


def vlb_terms_bpd(
    chain: DDPMChain,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    i: torch.Tensor,
    x0_hat: torch.Tensor,
    model_log_variance: torch.Tensor,
) -> torch.Tensor:
    """Per-sample VLB term [B] in bits/dim: decoder NLL -log p(x_0|x_1) where i = 1, else KL(q || p_theta).

    p_theta(x_{i-1} | x_i) = N(posterior_mean(x0_hat, x_i), exp(model_log_variance)) (Improved DDPM Sec. 2).
    """
    true_mean = chain.posterior_mean(x0, x_t, i)
    true_log_var = chain.posterior_log_variance(i, x0)
    model_mean = chain.posterior_mean(x0_hat, x_t, i)
    kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_variance)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)) / math.log(2.0)
    return torch.where(i == 1, nll, kl)


def prior_bpd(chain: DDPMChain, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per sample [B] in bits/dim (constant in the model)."""
    i = torch.full((x0.shape[0],), chain.num_steps, dtype=torch.long, device=x0.device)
    mean = chain._at(chain.alpha_bar.sqrt(), i, x0) * x0
    log_var = chain._at(torch.log1p(-chain.alpha_bar), i, x0).expand_as(x0)
    return _mean_flat(normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0))) / math.log(2.0)
