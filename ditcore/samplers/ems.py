"""Empirical model statistics (EMS) of DPM-Solver-v3 (Zheng, Lu, Chen, Zhu, NeurIPS 2023): estimation and storage.

With y = x_lambda / alpha_lambda the data-prediction PF-ODE reads dy/dlambda = x0_theta - y. DPM-Solver-v3 (Sec. 3.1)
splits off a linear part with per-dimension coefficients l_lambda:

    f_theta(x, lambda) = e^{-lambda} eps_theta - l_lambda y = (1 - l_lambda) y - x0_theta,  dy/dlambda = -f - l y,

and models the remaining change of f along the ODE as f^(1) ~ s_lambda f + b_lambda. The EMS are the optimal choices
per lambda and per data dimension, with expectations over x_lambda = alpha x0 + sigma eps, x0 from the data:

    l  = argmin E ||grad_x(sigma eps_theta - l x)||_F^2 = E[diag(grad_x(sigma eps_theta))] = 1 - alpha E[diag(dx0/dx)]
    s  = Cov(f^(1), f) / Var(f),   b = E[f^(1)] - s E[f]       (the least-squares fit of f^(1) by s f + b)

where f^(1) = df/dlambda is the total derivative along the ODE: with u = y - x0_theta = e^{-lambda} eps_theta,
f = u - l y and f^(1) = u^(1) - l^(1) y + l u, u^(1) = -u - dx0_theta/dlambda. l = 1, s = 0, b = 0 gives back
DPM-Solver++ (paper App. A.2). The estimator needs diag(dx0/dx) (Hutchinson: E_v[v * (J v)], v Rademacher) and
dx0_theta/dlambda along the ODE: both are Jacobian-vector products, taken by forward-mode AD (method "jvp") or by
central finite differences (method "fd", for models without forward-mode support). l^(1) is the derivative of the
estimated l across the (uniform) lambda grid.

EMS are a plain dict of tensors ({"lambdas": [K], "l"/"s"/"b": [K, *shape]}), so they can be stored with
safetensors beside a checkpoint; `EMS.to_dict()` / `EMS.from_dict()` convert. The estimator accumulates sums over
batches (and merges across workers) and only divides in `finalize()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ditcore.processes import Process, build_process, check_prediction
from ditcore.samplers.grids import EDM_SIGMA_MAX, EDM_SIGMA_MIN
from ditcore.samplers.guidance import Denoiser

EMS_KEYS = ("lambdas", "l", "s", "b")
_MOMENTS = ("l", "u", "y", "du", "uu", "yy", "uy", "duu", "duy")  # per-node, per-dimension sums


@dataclasses.dataclass
class EMS:
    """DPM-Solver-v3 statistics on an ascending uniform lambda grid: l, s, b are [K, *shape] (shape broadcasts to x)."""

    lambdas: torch.Tensor  # [K] float64
    l: torch.Tensor  # noqa: E741 (the paper's l_lambda)
    s: torch.Tensor
    b: torch.Tensor

    def __post_init__(self) -> None:
        lam = torch.as_tensor(self.lambdas, dtype=torch.float64).flatten()
        if lam.numel() < 4:
            raise ValueError(f"EMS need at least 4 lambda nodes, got {lam.numel()}")
        step = lam[1:] - lam[:-1]
        if not bool((step > 0).all()) or float((step - step.mean()).abs().max()) > 1e-9 * max(1.0, float(step.mean())):
            raise ValueError("EMS lambdas must be strictly increasing and uniformly spaced")
        self.lambdas = lam
        for name in ("l", "s", "b"):
            value = torch.as_tensor(getattr(self, name))
            if value.shape[0] != lam.numel():
                raise ValueError(f"EMS {name!r} has {value.shape[0]} nodes, lambdas has {lam.numel()}")
            setattr(self, name, value)
        if not (self.l.shape == self.s.shape == self.b.shape):
            shapes = [tuple(v.shape) for v in (self.l, self.s, self.b)]
            raise ValueError(f"EMS l/s/b shapes differ: {shapes}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-node shape of l, s, b (broadcast against one sample x[0])."""
        return tuple(self.l.shape[1:])

    def to_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Plain dict of contiguous CPU tensors (lambdas in float64, l/s/b in `dtype`), e.g. for safetensors."""
        out = {"lambdas": self.lambdas.detach().to("cpu", torch.float64).contiguous()}
        for name in ("l", "s", "b"):
            out[name] = getattr(self, name).detach().to("cpu", dtype).contiguous()
        return out

    @classmethod
    def from_dict(cls, state: dict[str, torch.Tensor]) -> EMS:
        """Inverse of to_dict (validates keys, node counts, shapes and the uniform lambda grid)."""
        missing = [k for k in EMS_KEYS if k not in state]
        if missing:
            raise KeyError(f"EMS dict lacks {missing}; expected keys {EMS_KEYS}")
        return cls(lambdas=state["lambdas"], l=state["l"], s=state["s"], b=state["b"])

    @classmethod
    def degenerate(cls, lambdas: torch.Tensor, shape: tuple[int, ...] = ()) -> EMS:
        """l = 1, s = 0, b = 0: DPM-Solver-v3 reduces to DPM-Solver++ with exact phi-integrals (paper App. A.2)."""
        lam = torch.as_tensor(lambdas, dtype=torch.float64)
        ones = torch.ones(lam.numel(), *shape, dtype=torch.float64)
        return cls(lambdas=lam, l=ones, s=torch.zeros_like(ones), b=torch.zeros_like(ones))


def ems_lambdas(
    process: str | Process,
    num_nodes: int = 1201,
    *,
    sigma_min: float = EDM_SIGMA_MIN,
    sigma_max: float = EDM_SIGMA_MAX,
) -> torch.Tensor:
    """Uniform lambda nodes [num_nodes] covering the log-SNR range the samplers visit (same range as the log-SNR
    time grids: from lambda(t_max), or -log sigma_max at pure noise, to min(lambda(t_min), -log sigma_min))."""
    proc = build_process(process)
    if num_nodes < 4:
        raise ValueError(f"num_nodes must be >= 4, got {num_nodes}")
    lam_lo = float(proc.log_snr(torch.tensor(float(proc.t_max), dtype=torch.float64)))
    lam_hi = float(proc.log_snr(torch.tensor(float(proc.t_min), dtype=torch.float64)))
    lam_lo = lam_lo if math.isfinite(lam_lo) else -math.log(sigma_max)
    lam_hi = min(lam_hi, -math.log(sigma_min))
    return torch.linspace(lam_lo, lam_hi, num_nodes, dtype=torch.float64)


def grid_derivative(values: torch.Tensor, h: float) -> torch.Tensor:
    """d/dlambda along dim 0 on a uniform grid (spacing h): fourth-order differences, one-sided at the ends."""
    f = values
    if f.shape[0] < 5:
        return torch.gradient(f, spacing=h, dim=0, edge_order=2 if f.shape[0] > 2 else 1)[0]
    out = torch.empty_like(f)
    out[2:-2] = (f[:-4] - 8 * f[1:-3] + 8 * f[3:-1] - f[4:]) / (12 * h)
    out[0] = (-25 * f[0] + 48 * f[1] - 36 * f[2] + 16 * f[3] - 3 * f[4]) / (12 * h)
    out[1] = (-3 * f[0] - 10 * f[1] + 18 * f[2] - 6 * f[3] + f[4]) / (12 * h)
    out[-1] = (25 * f[-1] - 48 * f[-2] + 36 * f[-3] - 16 * f[-4] + 3 * f[-5]) / (12 * h)
    out[-2] = (3 * f[-1] + 10 * f[-2] - 18 * f[-3] + 6 * f[-4] - f[-5]) / (12 * h)
    return out


def _rademacher(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    bits = torch.randint(0, 2, like.shape, generator=generator, device="cpu" if generator is None else generator.device)
    return (2.0 * bits - 1.0).to(device=like.device, dtype=like.dtype)


class EMSEstimator:
    """Accumulates the moments behind the EMS over batches of data x0; `finalize()` returns the EMS.

    model_fn(x_t, t, **cond) with prediction type `prediction` (the network as it will be sampled, including
    classifier-free guidance: pass `uncond` and `guidance`; EMS depend on the guidance scale). Per batch and per
    lambda node it draws x_lambda = alpha x0 + sigma eps and takes one model evaluation plus two Jacobian-vector
    products. Sums are float64 tensors [K, *shape] (9 of them); `state_dict()` / `merge()` combine workers.
    x0 may be float32 (a network's dtype); the moments are accumulated in float64.
    """

    def __init__(
        self,
        model_fn: Callable[..., torch.Tensor],
        *,
        process: str | Process,
        prediction: str,
        lambdas: torch.Tensor | None = None,
        method: str = "jvp",
        fd_step: float = 1e-3,
        uncond: dict | None = None,
        guidance: float = 1.0,
    ) -> None:
        if method not in ("jvp", "fd"):
            raise ValueError(f"method must be 'jvp' or 'fd', got {method!r}")
        if fd_step <= 0:
            raise ValueError(f"fd_step must be > 0, got {fd_step}")
        self.model_fn = model_fn
        self.process = build_process(process)
        self.prediction = check_prediction(prediction)
        self.lambdas = ems_lambdas(self.process) if lambdas is None else torch.as_tensor(lambdas, dtype=torch.float64)
        EMS.degenerate(self.lambdas)  # validates the grid
        self.method = method
        self.fd_step = float(fd_step)
        self.uncond = uncond
        self.guidance = float(guidance)
        self.times = [float(t) for t in self.process.t_from_log_snr(self.lambdas)]
        self.count = torch.zeros(self.lambdas.numel(), dtype=torch.float64)
        self.sums: dict[str, torch.Tensor] = {}

    # ---- accumulation ---------------------------------------------------------------------------------------
    def _denoiser(self, cond: dict | None) -> Denoiser:
        return Denoiser(self.model_fn, self.process, self.prediction, cond, self.uncond, self.guidance)

    def _x0_fn(self, den: Denoiser) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def x0_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            pred = den.predict(x, t).to(x.dtype)
            return den.x0_eps(pred, x, t)[0].to(x.dtype)

        return x0_fn

    def _node_moments(self, k: int, x0: torch.Tensor, eps: torch.Tensor, v: torch.Tensor, den: Denoiser) -> dict:
        """Per-sample quantities at node k: l estimate, u, y, u^(1) (all [B, *shape])."""
        t = self.times[k]
        alpha, sigma, d_alpha, d_sigma = self.process.coefficients(t)
        lam_dot = d_alpha / alpha - d_sigma / sigma  # d lambda / dt < 0
        x = alpha * x0 + sigma * eps
        t_vec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        x0_fn = self._x0_fn(den)
        if self.method == "jvp":
            x0_hat, jv = torch.func.jvp(lambda xx: x0_fn(xx, t_vec), (x,), (v,))
        else:
            h = self.fd_step * sigma  # x0_theta varies on the posterior scale ~ sigma in x
            x0_hat = x0_fn(x, t_vec)
            jv = (x0_fn(x + h * v, t_vec) - x0_fn(x - h * v, t_vec)) / (2.0 * h)
        eps_hat = (x - alpha * x0_hat) / sigma
        dx = (d_alpha * x0_hat + d_sigma * eps_hat) / lam_dot  # dx/dlambda along the PF-ODE
        dt = 1.0 / lam_dot
        if self.method == "jvp":
            _, dx0 = torch.func.jvp(x0_fn, (x, t_vec), (dx, torch.full_like(t_vec, dt)))
        else:
            dx0 = self._fd_total_derivative(x0_fn, x, t, x0_hat, dx, dt)
        y = x / alpha
        u = y - x0_hat
        return {"l": 1.0 - alpha * v * jv, "u": u, "y": y, "du": -u - dx0}

    def _fd_total_derivative(self, x0_fn, x, t, x0_hat, dx, dt) -> torch.Tensor:
        """d x0_theta / d lambda along the ODE by a central difference in lambda (one-sided at the time range ends)."""
        d = self.fd_step

        def at(step: float) -> torch.Tensor:
            tt = torch.full((x.shape[0],), t + step * dt, dtype=x.dtype, device=x.device)
            return x0_fn(x + step * dx, tt)

        t_lo, t_hi = min(self.process.t_min, self.process.t_clean), self.process.t_max
        fwd_ok, bwd_ok = t_lo <= t + d * dt <= t_hi, t_lo <= t - d * dt <= t_hi
        if fwd_ok and bwd_ok:
            return (at(d) - at(-d)) / (2.0 * d)
        return (at(d) - x0_hat) / d if fwd_ok else (x0_hat - at(-d)) / d

    def update(
        self,
        x0: torch.Tensor,
        *,
        cond: dict | None = None,
        generator: torch.Generator | None = None,
        nodes: Iterable[int] | None = None,
    ) -> None:
        """Add one batch of data x0 [B, *shape] (with its condition) at every lambda node (or only `nodes`).

        The noise eps and the Hutchinson probe v are drawn once per batch and shared by all nodes (common random
        numbers): the estimates then vary smoothly across lambda, which the finite-difference l^(1) relies on. When
        workers split the nodes of one batch, give them generators with the same seed.
        """
        den = self._denoiser(cond)
        gen_device = "cpu" if generator is None else generator.device
        eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float64).to(x0)
        v = _rademacher(x0, generator)
        # forward-mode jvp needs no autograd graph; the fused attention kernels lack forward AD, the math one has it
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]) if self.method == "jvp" else contextlib.nullcontext():
            for k in range(self.lambdas.numel()) if nodes is None else nodes:
                q = self._node_moments(int(k), x0, eps, v, den)
                q = {name: val.detach().to(torch.float64) for name, val in q.items()}
                products = {
                    "uu": q["u"] * q["u"],
                    "yy": q["y"] * q["y"],
                    "uy": q["u"] * q["y"],
                    "duu": q["du"] * q["u"],
                    "duy": q["du"] * q["y"],
                }
                for name in _MOMENTS:
                    value = (q[name] if name in q else products[name]).sum(0)
                    if name not in self.sums:
                        self.sums[name] = torch.zeros(
                            self.lambdas.numel(), *value.shape, dtype=torch.float64, device=value.device
                        )
                    self.sums[name][k] += value
                self.count[k] += x0.shape[0]

    # ---- combination across workers -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The accumulated sums (plain tensors) for shipping between workers."""
        return {"lambdas": self.lambdas, "count": self.count, **{f"sum_{k}": v for k, v in self.sums.items()}}

    def merge(self, other: EMSEstimator | dict[str, torch.Tensor]) -> None:
        """Add another estimator's sums (same lambda grid)."""
        state = other.state_dict() if isinstance(other, EMSEstimator) else other
        if not torch.allclose(state["lambdas"].to(torch.float64), self.lambdas, rtol=0, atol=1e-12):
            raise ValueError("cannot merge EMS sums over different lambda grids")
        self.count += state["count"].to(torch.float64)
        for name in _MOMENTS:
            key = f"sum_{name}"
            if key not in state:
                continue
            if name not in self.sums:
                self.sums[name] = torch.zeros_like(state[key], dtype=torch.float64)
            self.sums[name] += state[key].to(self.sums[name])

    # ---- the statistics -------------------------------------------------------------------------------------
    def finalize(self, ridge: float = 1e-12) -> EMS:
        """EMS from the sums. Where Var(f) <= ridge * (E[u^2] + l^2 E[y^2]) (f constant to rounding, as for a
        diagonal Gaussian) s is set to 0: f^(1) is then fitted by b alone."""
        if not self.sums or bool((self.count == 0).any()):
            missing = [i for i, c in enumerate(self.count.tolist()) if c == 0]
            raise ValueError(f"no samples at lambda node(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
        shape = (-1,) + (1,) * (self.sums["u"].dim() - 1)
        m = {name: value / self.count.to(value).reshape(shape) for name, value in self.sums.items()}
        l_lam = m["l"]
        h = float(self.lambdas[1] - self.lambdas[0])
        dl = grid_derivative(l_lam, h)  # l^(1) across the grid (smooth in lambda thanks to the shared noise)
        var_u, var_y = m["uu"] - m["u"] ** 2, m["yy"] - m["y"] ** 2
        cov_uy = m["uy"] - m["u"] * m["y"]
        cov_du_u, cov_du_y = m["duu"] - m["du"] * m["u"], m["duy"] - m["du"] * m["y"]
        # f = u - l y,  f^(1) = u^(1) - l^(1) y + l u  (l, l^(1) fixed per node and dimension)
        mean_f = m["u"] - l_lam * m["y"]
        mean_df = m["du"] - dl * m["y"] + l_lam * m["u"]
        var_f = (var_u - 2.0 * l_lam * cov_uy + l_lam * l_lam * var_y).clamp_min(0.0)
        cov = cov_du_u - l_lam * cov_du_y - dl * cov_uy + l_lam * dl * var_y + l_lam * var_u - l_lam * l_lam * cov_uy
        # Var f comes from cancelling moments; below rounding level of their scale f is constant and s is moot
        scale = m["uu"] + l_lam * l_lam * m["yy"]
        ok = var_f > ridge * scale
        s = torch.where(ok, cov / torch.where(ok, var_f, torch.ones_like(var_f)), torch.zeros_like(var_f))
        b = mean_df - s * mean_f
        return EMS(lambdas=self.lambdas.clone(), l=l_lam, s=s, b=b)


def estimate_ems(
    model_fn: Callable[..., torch.Tensor],
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, dict]],
    *,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> EMS:
    """EMS of model_fn from batches of data: each item is x0 [B, *shape] or (x0, cond dict); one pass over the data.

    `settings` are EMSEstimator's keyword arguments (process and prediction required; lambdas, method, fd_step,
    uncond, guidance); `generator` draws the noise of every batch.
    """
    est = EMSEstimator(model_fn, **settings)
    for item in batches:
        x0, cond = (item, None) if isinstance(item, torch.Tensor) else item
        est.update(x0, cond=cond, generator=generator)
    return est.finalize()
