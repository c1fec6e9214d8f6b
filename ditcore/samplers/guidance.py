"""The denoiser the solvers call: model prediction -> (x0_hat, eps_hat), with classifier-free guidance.

CFG lives here, not in the model (DESIGN §6): conditional and unconditional inputs go through the model in
one batched call, the guided prediction is uncond + w * (cond - uncond). All prediction types are affine in
the prediction for a fixed x_t, so guiding the raw prediction equals guiding x0_hat or eps_hat.
An optional guidance interval (Kynkaanniemi et al. 2024) applies guidance only for t in [lo, hi];
outside it the model runs on the conditional half only.
"""

from __future__ import annotations

from typing import Callable

import torch

from ditcore.processes import Process, check_prediction, to_x0_eps


def _expand_like(value: torch.Tensor | int | float, ref: torch.Tensor, key: str) -> torch.Tensor:
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
        self.guidance_interval = guidance_interval
        if guidance_interval is not None:
            lo, hi = guidance_interval
            if not lo <= hi:
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

    def prediction_at(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Raw (guided) model prediction at scalar time t."""
        batch = x.shape[0]
        self.nfe += 1
        if self._guided_here(t):
            t_in = torch.full((2 * batch,), t, dtype=x.dtype, device=x.device)  # [2B]
            cond_in = {k: torch.cat([v, self.uncond[k]]) for k, v in self.cond.items()}
            out = self.model_fn(torch.cat([x, x]), t_in, **cond_in)  # [2B, C, H, W]
            pred_c, pred_u = out[:batch], out[batch:]
            return pred_u + self.guidance * (pred_c - pred_u)
        t_in = torch.full((batch,), t, dtype=x.dtype, device=x.device)  # [B]
        return self.model_fn(x, t_in, **self.cond)

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.prediction_at(x, t).to(x.dtype)
        t_vec = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        x0, eps = to_x0_eps(self.process, self.prediction, pred, x, t_vec)
        return x0.to(x.dtype), eps.to(x.dtype)


def randn_per_sample(x: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal like x where row b comes only from generators[b] (batch-composition independent)."""
    if generators is None:
        return torch.randn_like(x)
    if len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per sample: got {len(generators)} for batch {x.shape[0]}")
    rows = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=x.device, dtype=x.dtype)
