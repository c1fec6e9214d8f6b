"""Training objectives: noise the data with a process, regress the model onto the prediction target.

`loss` is a pure function of (model, x0, cond, generator, cfg, null_cond): all randomness comes from the
generator, so a training step is reproducible. Classifier-free-guidance condition dropout happens here
(per sample, condition -> null condition); guidance itself lives in the sampler.

Two paper recipes are options of the same loss (docs/recipes.md):
- learn_sigma: DiT/ADM's learned reverse variance, L_hybrid = L_simple + lambda L_vlb (Improved DDPM Sec. 3.1) on
  the discrete DDPM chain of a VP process (ditcore.vlb); needs a model built with learn_sigma.
- preconditioning="edm": EDM's preconditioned denoiser and loss weighting (Karras et al. 2022, Table 1) on the
  "edm-ve" process, usually with t_sampler="log-normal".
`sampling_fn(model, cfg)` is the one place that turns a trained model and its objective into the
(model_fn, prediction) pair the samplers take.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import torch

from ditcore.preconditioning import (
    EDM_P_MEAN,
    EDM_P_STD,
    EDM_SIGMA_DATA,
    EDM_SIGMA_MIN,
    PRECONDITIONINGS,
    edm_denoise,
    edm_scalings,
)
from ditcore.processes import (
    PREDICTIONS,
    VE_PROCESS_NAMES,
    VP_PROCESS_NAMES,
    Process,
    build_process,
    check_prediction,
    prediction_target,
    to_x0_eps,
)
from ditcore.timesteps import T_SAMPLERS, U_SAMPLERS, TimeSampler
from ditcore.vlb import VARIANCES, DDPMChain, prior_bpd, vlb_terms_bpd


@dataclasses.dataclass
class ObjectiveConfig:
    """Which process, prediction target, timestep distribution and CFG dropout rate to train with."""

    process: str = "flow"
    prediction: str = "velocity"  # "velocity" | "eps" | "v" | "x0"
    t_sampler: str = "uniform"  # "uniform" | "logit-normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_shift: float = 1.0  # SD3 shift applied after sampling t (1.0 = none); see timesteps.resolution_shift
    cond_dropout: float = 0.1
    # DiT/ADM learned variance: hybrid loss L_simple + vlb_weight * L_vlb on a vlb_steps-step DDPM chain.
    learn_sigma: bool = False
    vlb_weight: float = 0.001  # lambda of Improved DDPM Sec. 3.1
    vlb_steps: int = 1000  # T of the discrete chain (ditcore.vlb)
    # EDM: "edm" = preconditioned denoiser + lambda(sigma) weighting (Karras et al. 2022, Table 1).
    preconditioning: str = "none"  # "none" | "edm"
    sigma_data: float = EDM_SIGMA_DATA
    p_mean: float = EDM_P_MEAN  # t_sampler "log-normal": ln(sigma/alpha) ~ N(p_mean, p_std^2)
    p_std: float = EDM_P_STD

    @property
    def time_sampler(self) -> TimeSampler:
        """The training-time distribution t_sampler and its parameters name."""
        return TimeSampler(self.t_sampler, self.logit_mean, self.logit_std, self.time_shift, self.p_mean, self.p_std)

    def __post_init__(self) -> None:
        build_process(self.process)  # raises naming the bad process
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"objective.prediction: unknown {self.prediction!r}; expected one of {PREDICTIONS}")
        if self.t_sampler not in T_SAMPLERS:
            raise ValueError(f"objective.t_sampler: unknown {self.t_sampler!r}; expected one of {T_SAMPLERS}")
        if not 0.0 <= self.cond_dropout <= 1.0:  # NaN fails this too
            raise ValueError(f"objective.cond_dropout must be in [0, 1], got {self.cond_dropout}")
        for key in ("logit_mean", "p_mean"):  # any finite value
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"objective.{key} must be a finite number, got {getattr(self, key)!r}")
        if not (math.isfinite(self.time_shift) and self.time_shift > 0):
            raise ValueError(f"objective.time_shift must be a finite number > 0, got {self.time_shift!r}")
        if not (math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ValueError(f"objective.logit_std must be a finite number > 0, got {self.logit_std!r}")
        if self.t_sampler == "log-normal" and self.time_shift != 1.0:
            raise ValueError("objective.time_shift: t_sampler 'log-normal' takes no time shift; move p_mean instead")
        if not (math.isfinite(self.p_std) and self.p_std > 0):
            raise ValueError(f"objective.p_std must be a finite number > 0, got {self.p_std!r}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"objective.sigma_data must be a finite number > 0, got {self.sigma_data!r}")
        if not (math.isfinite(self.vlb_weight) and self.vlb_weight >= 0):
            raise ValueError(f"objective.vlb_weight must be a finite number >= 0, got {self.vlb_weight!r}")
        if self.vlb_steps < 2:
            raise ValueError(f"objective.vlb_steps must be >= 2, got {self.vlb_steps}")
        if self.preconditioning not in PRECONDITIONINGS:
            raise ValueError(
                f"objective.preconditioning: unknown {self.preconditioning!r}; expected one of {PRECONDITIONINGS}"
            )
        if self.learn_sigma:
            if self.process not in VP_PROCESS_NAMES:
                raise ValueError(
                    f"objective.learn_sigma: the hybrid loss's L_vlb lives on the DDPM chain of a variance-preserving "
                    f"process; set objective.process to one of {VP_PROCESS_NAMES} (got {self.process!r})"
                )
            if self.t_sampler not in U_SAMPLERS:
                raise ValueError(
                    f"objective.learn_sigma: the discrete chain steps are drawn from t_sampler {U_SAMPLERS}, "
                    f"got {self.t_sampler!r}"
                )
            if self.preconditioning != "none":
                raise ValueError("objective.learn_sigma cannot be combined with objective.preconditioning='edm'")
        if self.preconditioning == "edm":
            if self.process not in VE_PROCESS_NAMES:
                raise ValueError(
                    f"objective.preconditioning='edm' is defined on EDM's VE process x = x_0 + sigma n; set "
                    f"objective.process to one of {VE_PROCESS_NAMES} (got {self.process!r})"
                )
            if self.prediction != "x0":
                raise ValueError(
                    "objective.preconditioning='edm' trains the denoiser D(x; sigma), an x0-prediction (EDM Eq. 7); "
                    f"set objective.prediction to 'x0' (got {self.prediction!r})"
                )


def check_model(cfg: ObjectiveConfig, model: object) -> None:
    """Raise ValueError when a model (or its DiTConfig / MMDiTConfig) cannot be trained with the objective cfg."""
    config = getattr(model, "config", model)
    if cfg.learn_sigma and not getattr(config, "learn_sigma", False):
        raise ValueError(
            "objective.learn_sigma=true trains the variance channels of a model built with learn_sigma=true "
            f"(DiT only); the model ({type(config).__name__}) has learn_sigma=false: set model.overrides.learn_sigma"
        )


def _randn(shape: torch.Size | tuple, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal drawn on the generator's device, moved to `like` (same result on CPU and GPU)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def _bshape(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ...] matching value's rank."""
    return mask.reshape(mask.shape[0], *([1] * (value.dim() - 1)))


def drop_conditions(
    cond: dict[str, torch.Tensor],
    null_cond: dict[str, torch.Tensor | int | float],
    p: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Replace each sample's condition by the null condition with probability p (CFG training).

    Class models: {"y": num_classes}. Text models: {"text_emb": [L,D], "text_mask": [L], "text_pooled": [Dp]}
    (the empty-prompt embedding and its mask), broadcast per sample. One Bernoulli draw per sample, shared by
    all keys so a dropped sample loses its whole condition.
    """
    if p <= 0.0 or not cond:
        return dict(cond)
    missing = [k for k in cond if k not in null_cond]
    if missing:
        raise KeyError(f"null_cond has no entry for condition key(s) {missing}; got keys {sorted(null_cond)}")
    batch = next(iter(cond.values())).shape[0]
    gen_device = generator.device if generator is not None else "cpu"
    if p >= 1.0:  # every row: no draw (none is needed, and one without a generator would move the global RNG)
        drop = torch.ones(batch, dtype=torch.bool, device=gen_device)
    else:
        drop = torch.rand(batch, generator=generator, device=gen_device) < p  # [B]
    out = {}
    for key, value in cond.items():
        null = torch.as_tensor(null_cond[key], device=value.device).to(value.dtype)
        if null.dim() == value.dim() - 1:
            null = null.unsqueeze(0)
        if null.dim() != value.dim() or any(a not in (1, b) for a, b in zip(null.shape[1:], value.shape[1:])):
            raise ValueError(
                f"null_cond[{key!r}] has shape {tuple(null.shape)}, "
                f"incompatible with condition shape {tuple(value.shape)}"
            )
        null = null.expand_as(value)
        out[key] = torch.where(_bshape(drop.to(value.device), value), null, value)
    return out


def sample_training_noise(
    cfg: ObjectiveConfig, process: Process, x0: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t [B] from cfg's time sampler within the process's range, eps like x0): one training draw, in this order."""
    t = cfg.time_sampler.times(
        x0.shape[0], generator, t_min=process.t_min, t_max=process.t_max, device=x0.device, process=process
    )
    return t, _randn(x0.shape, generator, x0)


def _training_conditions(
    cond: dict | None, null_cond: dict | None, cfg: ObjectiveConfig, generator: torch.Generator | None
) -> dict:
    """A copy of cond with cfg.cond_dropout of the samples replaced by the null condition (when one is given)."""
    cond = dict(cond or {})
    if null_cond is not None and cfg.cond_dropout > 0:
        cond = drop_conditions(cond, null_cond, cfg.cond_dropout, generator)
    return cond


@contextlib.contextmanager
def _eval_mode(model: Callable) -> Iterator[None]:
    """The block runs with a training module in eval mode (dropout off); train mode is restored afterwards."""
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _predict(model: Callable, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """Model output restricted to the prediction channels (learn_sigma models output 2C, prediction first)."""
    out = model(x_t, t, **cond)
    if out.shape[1] != x_t.shape[1]:
        out = out[:, : x_t.shape[1]]
    return out


def loss(
    model: Callable,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    generator: torch.Generator | None,
    cfg: ObjectiveConfig,
    null_cond: dict[str, torch.Tensor | int | float] | None = None,
) -> torch.Tensor:
    """Mean-squared error between model(x_t, t, **cond) and the cfg.prediction target (scalar tensor).

    With cfg.learn_sigma this is the hybrid loss L_simple + vlb_weight * L_vlb (`hybrid_loss_terms`); with
    cfg.preconditioning="edm" it is EDM's lambda(sigma)-weighted denoiser loss (`edm_loss`).
    """
    if cfg.preconditioning == "edm":
        return edm_loss(model, x0, cond, generator, cfg, null_cond)
    if cfg.learn_sigma:
        return hybrid_loss_terms(model, x0, cond, generator, cfg, null_cond)["loss"]
    process = build_process(cfg.process)
    check_prediction(cfg.prediction)
    t, eps = sample_training_noise(cfg, process, x0, generator)  # [B], [B, C, H, W]
    a = _bshape(process.alpha(t), x0).to(x0.dtype)
    s = _bshape(process.sigma(t), x0).to(x0.dtype)
    x_t = a * x0 + s * eps  # [B, C, H, W]
    cond = _training_conditions(cond, null_cond, cfg, generator)
    target = prediction_target(process, cfg.prediction, x0, eps, t.to(x0.dtype))  # [B, C, H, W]
    pred = _predict(model, x_t, t.to(x0.dtype), cond)  # [B, C, H, W]
    return torch.mean((pred.float() - target.float()) ** 2)


@torch.no_grad()
def validation_loss(
    model: Callable,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    cfg: ObjectiveConfig,
    num_t: int = 8,
    seed: int = 0,
) -> float:
    """Deterministic loss: num_t evenly spaced t (bin midpoints), fixed noise from `seed`, no CFG dropout.

    Uniform weighting over t regardless of cfg.t_sampler, so curves of runs with different training-time
    samplers stay comparable. learn_sigma objectives report their L_simple part (the full bound is
    `vlb_bits_per_dim`); preconditioning="edm" reports EDM's loss at num_t sigmas evenly spaced in ln(sigma) over
    [max(0.002, sigma(t_min)), sigma(t_max)] (uniform in t would put every point at sigma > 5).
    """
    if num_t < 1:
        raise ValueError(f"num_t must be >= 1, got {num_t}")
    process = build_process(cfg.process)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with _eval_mode(model):
        total = 0.0
        if cfg.preconditioning == "edm":
            log_lo = math.log(max(EDM_SIGMA_MIN, float(process.sigma(float(process.t_min)))))
            log_hi = math.log(float(process.sigma(float(process.t_max))))
            for k in range(num_t):
                sigma = math.exp(log_lo + (log_hi - log_lo) * (k + 0.5) / num_t)
                eps = _randn(x0.shape, generator, x0)  # [B, C, H, W]
                sig = torch.full((x0.shape[0],), sigma, dtype=torch.float64, device=x0.device)  # [B]
                total += float(_edm_mse(model, x0, eps, sig, dict(cond or {}), cfg.sigma_data))
            return total / num_t
        for k in range(num_t):
            u = (k + 0.5) / num_t
            t_val = process.t_min + (process.t_max - process.t_min) * u
            t = torch.full((x0.shape[0],), t_val, dtype=x0.dtype, device=x0.device)  # [B]
            eps = _randn(x0.shape, generator, x0)  # [B, C, H, W]
            a = _bshape(process.alpha(t), x0)
            s = _bshape(process.sigma(t), x0)
            x_t = a * x0 + s * eps
            target = prediction_target(process, cfg.prediction, x0, eps, t)
            pred = _predict(model, x_t, t, dict(cond or {}))
            total += float(torch.mean((pred.float() - target.float()) ** 2))
        return total / num_t


def _chain(cfg: ObjectiveConfig) -> DDPMChain:
    """The discrete DDPM chain of cfg's VP process (vlb_steps steps)."""
    return DDPMChain.from_process(cfg.process, cfg.vlb_steps)


def _split_learned(out: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A learn_sigma output [B, 2C, ...] -> (prediction, variance output), each [B, C, ...]."""
    c = x_t.shape[1]
    if out.shape[1] != 2 * c:
        raise ValueError(
            f"objective.learn_sigma=true needs a model that outputs 2C = {2 * c} channels (built with "
            f"learn_sigma=true); got {out.shape[1]} output channels for {c} input channels"
        )
    return out[:, :c], out[:, c:]


def hybrid_loss_terms(
    model: Callable,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    generator: torch.Generator | None,
    cfg: ObjectiveConfig,
    null_cond: dict[str, torch.Tensor | int | float] | None = None,
) -> dict[str, torch.Tensor]:
    """ADM hybrid loss of a learn_sigma model: {"loss": mse + vlb_weight * vlb, "mse": L_simple, "vlb": L_vlb}.

    Improved DDPM Sec. 3.1: a chain step i in 1..T is drawn from cfg.t_sampler's quantile u (i = floor(u T) + 1,
    uniform steps for "uniform", as ADM), x_i = sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) eps is fed at the
    process time t_i. "mse" is the cfg.prediction regression on the first C channels; "vlb" = T * mean_b L_{i_b}
    (bits/dim) is the one-step estimate of sum_i L_i, so vlb_weight = 0.001 at T = 1000 weights each sample's term
    by 1, as ADM's rescaled loss. The L_vlb term sees the mean through a stop-gradient: it trains only the variance.
    """
    process = build_process(cfg.process)
    check_prediction(cfg.prediction)
    chain = _chain(cfg)
    steps = chain.num_steps
    batch = x0.shape[0]
    u = cfg.time_sampler.quantiles(batch, generator)  # [B] float64
    i = (torch.floor(u * steps).long() + 1).clamp(1, steps).to(x0.device)  # [B] chain step
    t = chain.t.to(x0.device)[i].to(x0.dtype)  # [B] process time of step i
    eps = _randn(x0.shape, generator, x0)  # [B, C, H, W]
    x_t = chain.q_sample(x0, eps, i)  # [B, C, H, W]
    cond = _training_conditions(cond, null_cond, cfg, generator)
    pred, var_out = _split_learned(model(x_t, t, **cond), x_t)  # [B, C, H, W] each
    target = prediction_target(process, cfg.prediction, x0, eps, t)
    mse = torch.mean((pred.float() - target.float()) ** 2)
    # Stop-gradient on the mean (Improved DDPM Sec. 3.1): L_vlb guides only Sigma, L_simple only the mean.
    x0_hat, _ = to_x0_eps(process, cfg.prediction, pred.detach().float(), x_t.float(), t.float())
    log_var = chain.model_log_variance(var_out.float(), i)
    vlb = steps * vlb_terms_bpd(chain, x0.float(), x_t.float(), i, x0_hat, log_var).mean()
    return {"loss": mse + cfg.vlb_weight * vlb, "mse": mse, "vlb": vlb}


def _edm_mse(
    model: Callable, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, cond: dict, sigma_data: float
) -> torch.Tensor:
    """EDM Eq. 8: mean ||F(c_in x, c_noise) - (x_0 - c_skip x) / c_out||^2 at x = x_0 + sigma eps (sigma [B])."""
    c_skip, c_out, c_in, c_noise = (_bshape(c, x0).to(x0.dtype) for c in edm_scalings(sigma.to(x0.device), sigma_data))
    x = x0 + _bshape(sigma.to(x0.device), x0).to(x0.dtype) * eps  # [B, C, H, W]; VE: alpha = 1
    target = (x0 - c_skip * x) / c_out  # F's effective target; = lambda-weighted ||D - x_0||^2 since lambda c_out^2 = 1
    out = _predict(model, c_in * x, c_noise.reshape(-1), cond)  # [B, C, H, W]
    return torch.mean((out.float() - target.float()) ** 2)


def edm_loss(
    model: Callable,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    generator: torch.Generator | None,
    cfg: ObjectiveConfig,
    null_cond: dict[str, torch.Tensor | int | float] | None = None,
) -> torch.Tensor:
    """EDM training loss E[lambda(sigma) ||D(x_0 + sigma n; sigma) - x_0||^2] (Karras et al. 2022, Eq. 2 and 8).

    sigma = process.sigma(t) with t from cfg.t_sampler ("log-normal": ln(sigma) ~ N(p_mean, p_std^2), EDM's
    choice); the mean is over batch and elements, like `loss`. The network sees (c_in x, c_noise) as (x_t, t).
    """
    process = build_process(cfg.process)
    t, eps = sample_training_noise(cfg, process, x0, generator)  # [B], [B, C, H, W]
    cond = _training_conditions(cond, null_cond, cfg, generator)
    sigma = process.sigma(t.to(torch.float64))  # [B]
    return _edm_mse(model, x0, eps, sigma, cond, cfg.sigma_data)


def sampling_fn(
    model: Callable, cfg: ObjectiveConfig, *, keep_variance: bool = False
) -> tuple[Callable[..., torch.Tensor], str]:
    """(model_fn, prediction) for ditcore.samplers.sample(model_fn, ..., process=cfg.process, prediction=...).

    preconditioning="edm": model_fn is the denoiser D = c_skip x + c_out F(c_in x, c_noise) at sigma = process.sigma(t)
    and prediction is "x0". Otherwise model_fn is the model restricted to its first C output channels (a learn_sigma
    model's variance channels are dropped) and prediction is cfg.prediction. keep_variance (learn_sigma objectives
    only) keeps all 2C channels, [prediction; o], for a sampler that uses the learned variance (ditcore.vlb).
    """
    channels = getattr(model, "in_channels", None)
    if keep_variance and not cfg.learn_sigma:
        raise ValueError("sampling_fn(keep_variance=True) needs an objective trained with learn_sigma=true")
    if cfg.preconditioning == "edm":
        process = build_process(cfg.process)

        def edm_fn(x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
            sigma = process.sigma(t.to(torch.float64))  # [B]; VE: alpha = 1 so sigma is EDM's noise level
            return edm_denoise(model, x_t, sigma, cond, cfg.sigma_data)

        return edm_fn, "x0"

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        out = model(x_t, t, **cond)  # [B, C_out, H, W]
        c = channels if channels is not None else x_t.shape[1]
        if keep_variance:
            _split_learned(out, x_t)  # raises unless the output is [prediction; o] with 2C channels
            return out
        return out[:, :c] if out.shape[1] != c else out

    return model_fn, cfg.prediction


@dataclasses.dataclass
class VLBEstimate:
    """Variational bound in bits/dim: total = sum(terms) + prior; terms[i-1] = L_{i-1} (batch means)."""

    total: float
    prior: float
    terms: torch.Tensor  # [T] float64: decoder NLL at index 0, then KL terms of steps 2..T


@torch.no_grad()
def vlb_bits_per_dim(
    model: Callable,
    x0: torch.Tensor,
    cond: dict[str, torch.Tensor] | None,
    cfg: ObjectiveConfig,
    *,
    variances: tuple[str, ...] = ("learned",),
    seed: int = 0,
) -> dict[str, VLBEstimate]:
    """The full bound -log p(x_0) <= L_0 + ... + L_T on cfg's DDPM chain, one entry per reverse-variance choice.

    Every step i = 1..T is evaluated (T = cfg.vlb_steps model calls, fresh noise per step from `seed`) with the
    mean from cfg.prediction; variances: "learned" (Improved DDPM Eq. 15; needs a learn_sigma model),
    "fixed-small" (beta_tilde), "fixed-large" (beta). All choices share the same x_i and model calls.
    x0 is data on [-1, 1] (the decoder assumes 8-bit levels there, as ADM).
    """
    if cfg.process not in VP_PROCESS_NAMES:
        raise ValueError(
            f"vlb_bits_per_dim needs a variance-preserving process {VP_PROCESS_NAMES}, got {cfg.process!r}"
        )
    bad = [v for v in variances if v not in VARIANCES]
    if bad or not variances:
        raise ValueError(f"unknown variance choice(s) {bad}; expected some of {VARIANCES}")
    process = build_process(cfg.process)
    chain = _chain(cfg)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with _eval_mode(model):
        x0f = x0.float()
        terms = {v: torch.zeros(chain.num_steps, dtype=torch.float64) for v in variances}
        for step in range(1, chain.num_steps + 1):
            i = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)  # [B]
            t = chain.t.to(x0.device)[i].to(x0.dtype)  # [B]
            eps = _randn(x0.shape, generator, x0)
            x_t = chain.q_sample(x0, eps, i)
            out = model(x_t, t, **dict(cond or {}))
            if "learned" in variances:
                pred, var_out = _split_learned(out, x_t)
            else:
                pred, var_out = out[:, : x_t.shape[1]], None
            x0_hat, _ = to_x0_eps(process, cfg.prediction, pred.float(), x_t.float(), t.float())
            for v in variances:
                if v == "learned":
                    log_var = chain.model_log_variance(var_out.float(), i)
                else:
                    log_var = chain.fixed_log_variance(v, i, x0f)
                terms[v][step - 1] = float(vlb_terms_bpd(chain, x0f, x_t.float(), i, x0_hat, log_var).mean())
        prior = float(prior_bpd(chain, x0f).mean())
        return {v: VLBEstimate(total=float(terms[v].sum()) + prior, prior=prior, terms=terms[v]) for v in variances}
