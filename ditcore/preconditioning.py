"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space...", Sec. 5 and Table 1).

The network F is wrapped into a denoiser D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
(EDM Eq. 7) for x = x_0 + sigma n, with

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),   c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2),          c_noise = ln(sigma) / 4,

chosen so that F's input and its effective training target have unit variance for data of std sigma_data. The
loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2 turns
lambda ||D - x_0||^2 into ||F - (x_0 - c_skip x) / c_out||^2 (EDM Eq. 8): every noise level's target has unit
weight. c_noise is what the network receives as its time input t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PRECONDITIONINGS = ("none", "edm")
EDM_SIGMA_DATA = 0.5  # EDM Table 1 (CIFAR-10 / ImageNet pixels in [-1, 1])
EDM_P_MEAN = -1.2  # training noise distribution ln(sigma) ~ N(P_mean, P_std^2)
EDM_P_STD = 1.2
EDM_SIGMA_MIN = 0.002  # sampling range (EDM Table 1); also the bottom of the validation-loss sigma range
EDM_SIGMA_MAX = 80.0


def edm_scalings(
    sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 at noise level sigma (any shape, same dtype)."""
    norm = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / norm
    c_out = sigma * sigma_data / torch.sqrt(norm)
    c_in = 1.0 / torch.sqrt(norm)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _bcol(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] coefficient -> [B, 1, ...] in like's dtype/device."""
    return c.to(dtype=like.dtype, device=like.device).reshape(c.shape[0], *([1] * (like.dim() - 1)))


def edm_denoise(
    network: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: dict | None = None,
    sigma_data: float = EDM_SIGMA_DATA,
) -> torch.Tensor:
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, **cond) (EDM Eq. 7); sigma [B]; F's extra channels dropped.

    Only the first C output channels of F are used (a learn_sigma model's variance channels have no EDM meaning).
    """
    sigma64 = sigma.to(torch.float64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma64, sigma_data)
    out = network(_bcol(c_in, x) * x, c_noise.to(dtype=x.dtype, device=x.device), **(cond or {}))
    out = out[:, : x.shape[1]] if out.shape[1] != x.shape[1] else out
    return _bcol(c_skip, x) * x + _bcol(c_out, x) * out.to(x.dtype)
