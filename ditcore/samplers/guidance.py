"""The denoiser the solvers call: model prediction -> (x0_hat, eps_hat), with classifier-free guidance.

CFG lives here, not in the model (docs/architecture.md): conditional and unconditional inputs go through the model in
one batched call, the guided prediction is uncond + w * (cond - uncond). All prediction types are affine in
the prediction for a fixed x_t, so guiding the raw prediction equals guiding x0_hat or eps_hat.
An optional guidance interval (Kynkaanniemi et al. 2024) applies guidance only for t in [lo, hi];
outside it the model runs on the conditional half only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ditcore.processes import Process, check_prediction, to_x0_eps


def _expand_like(value: torch.Tensor | float, ref: torch.Tensor, key: str) -> torch.Tensor:
    """Broadcast an unbatched (or batched) unconditional entry to the conditional entry's shape."""
    value = torch.as_tensor(value, device=ref.device)
    if value.dim() == ref.dim() - 1:
        value = value.unsqueeze(0)
    if value.dim() != ref.dim():
        raise ValueError(f"uncond[{key!r}] has shape {tuple(value.shape)}, incompatible with cond {tuple(ref.shape)}")
    return value.to(ref.dtype).expand_as(ref)


class Denoiser:
    """Callable (x_t [B,...], t float) -> (x0_hat, eps_hat); counts model evaluations in `nfe`."""

    def __init__(
        self,
        model_fn: Callable[..., torch.Tensor],
        process: Process,
        prediction: str,
        cond: dict | None = None,
        uncond: dict | None = None,
        guidance: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> None:
        check_prediction(prediction)
        self.model_fn = model_fn
        self.process = process
        self.prediction = prediction
        self.cond = dict(cond or {})
        self.guidance = float(guidance)
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            # 0: the unconditional model, 1: the conditional one; below 0 is nothing the project trains or serves for.
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
        self.guidance_interval = guidance_interval
        if guidance_interval is not None:
            lo, hi = guidance_interval
            if not lo <= hi:  # NaN fails this too
                raise ValueError(f"guidance_interval must be (lo, hi) with lo <= hi, got {guidance_interval}")
        self.uncond = None
        if self.guidance != 1.0:
            if uncond is None:
                raise ValueError("guidance != 1 needs `uncond` (the null condition, e.g. {'y': num_classes})")
            missing = [k for k in self.cond if k not in uncond]
            if missing:
                raise KeyError(f"uncond lacks condition key(s) {missing}")
            self.uncond = {k: _expand_like(uncond[k], v, k) for k, v in self.cond.items()}
        self.nfe = 0  # number of denoiser calls (one batched CFG call counts once)

    def _guided_here(self, t: float) -> bool:
        if self.uncond is None:
            return False
        if self.guidance_interval is None:
            return True
        lo, hi = self.guidance_interval
        return lo <= t <= hi

    def predict(self, x: torch.Tensor, t: torch.Tensor, *, guided: bool | None = None) -> torch.Tensor:
        """Raw (guided) model output at per-sample times t [B] (differentiable in x and t; no NFE count)."""
        batch = x.shape[0]
        if guided is None:
            guided = self.uncond is not None
        if guided:
            cond_in = {k: torch.cat([v, self.uncond[k]]) for k, v in self.cond.items()}
            out = self.model_fn(torch.cat([x, x]), torch.cat([t, t]), **cond_in)  # [2B, C(, ...)]
            out_c, out_u = out[:batch], out[batch:]
            if out.shape[1] != x.shape[1]:  # learn_sigma output: guide the prediction, keep the conditional variance
                c = x.shape[1]
                return torch.cat([out_u[:, :c] + self.guidance * (out_c[:, :c] - out_u[:, :c]), out_c[:, c:]], 1)
            return out_u + self.guidance * (out_c - out_u)
        return self.model_fn(x, t, **self.cond)

    def prediction_at(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Raw (guided) model prediction at scalar time t."""
        self.nfe += 1
        t_in = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)  # [B]
        return self.predict(x, t_in, guided=self._guided_here(t))

    def x0_eps(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from a prediction at per-sample times t [B]."""
        return to_x0_eps(self.process, self.prediction, pred, x, t)

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.prediction_at(x, t).to(x.dtype)
        t_vec = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        x0, eps = to_x0_eps(self.process, self.prediction, pred, x, t_vec)
        return x0.to(x.dtype), eps.to(x.dtype)

    def with_variance(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat, o) for a learn_sigma model_fn that returns [prediction; variance output] (2C channels).

        o is the raw variance output (iDDPM, Nichol & Dhariwal 2021, Eq. 15 with v = (o + 1) / 2); with guidance
        the prediction channels are guided and o comes from the conditional half, as DiT's forward_with_cfg does.
        """
        out = self.prediction_at(x, t).to(x.dtype)
        c = x.shape[1]
        if out.shape[1] != 2 * c:
            raise ValueError(
                f"learned-variance sampling needs model_fn to return 2C = {2 * c} channels "
                f"(prediction, variance), got {out.shape[1]}; "
                "use model_fn_from_model(model, learn_sigma=True)"
            )
        t_vec = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        x0, eps = to_x0_eps(self.process, self.prediction, out[:, :c], x, t_vec)
        return x0.to(x.dtype), eps.to(x.dtype), out[:, c:]


def randn_per_sample(x: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal like x where row b comes only from generators[b] (batch-composition independent)."""
    if generators is None:
        return torch.randn_like(x)
    if len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per sample: got {len(generators)} for batch {x.shape[0]}")
    rows = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=x.device, dtype=x.dtype)
