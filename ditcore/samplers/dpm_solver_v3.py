"""DPM-Solver-v3 (Zheng, Lu, Chen, Zhu, NeurIPS 2023): multistep predictor-corrector with empirical model statistics.

With y = x / alpha, f = (1 - l) y - x0_theta and the EMS l, s, b (ditcore/samplers/ems.py), the exact PF-ODE solution
from lambda_s to lambda_t is (Sec. 3.1; L = int l, S = int s, B = int e^{-S} b, cumulative over the EMS grid)

    y_t = e^{L_s - L_t} y_s - e^{-L_t - S_s} int_{lambda_s}^{lambda_t} e^{L + S} g_s dlambda
          - e^{-L_t} int_{lambda_s}^{lambda_t} e^{L + S} (B - B_s) dlambda,
    g_s(lambda) = e^{-(S(lambda) - S_s)} f(lambda) - e^{S_s} (B(lambda) - B_s),   g_s(lambda_s) = f_s.

The EMS make g nearly constant (dg/dlambda = e^{-(S - S_s)} (f^(1) - s f - b)), so g is Taylor-expanded around
lambda_s (Sec. 3.2): order 1 keeps g_s(lambda_s); order n adds derivatives estimated from the n - 1 previous points
(predictor) and, once the model has been evaluated at the new point, from that point too (corrector, the UniPC-style
correction the paper uses: it reuses the new evaluation, so it costs no extra model call). Derivatives come from
the interpolating polynomial in lambda, or from plain divided differences ("pseudo-order", Sec. 3.3).

The integrals are tabulated on the EMS lambda grid with a fourth-order cumulative quadrature; sampling times are
moved to the nearest EMS node (as the reference implementation does). Below the grid (a start at pure noise,
lambda = -inf) the statistics are taken degenerate, which makes the first step exact in closed form. As in the
reference implementation the last predictor step ends at the last EMS node (its t_0) without a model evaluation;
there x0_hat = (1 - l) y - f with the extrapolated f, which lands on sigma = 0. With l = 1, s = 0, b = 0 this is
DPM-Solver++ with exact phi-integrals (paper App. A.2).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ditcore.processes import Process
from ditcore.samplers.dpm_solver import first_order_step
from ditcore.samplers.ems import EMS
from ditcore.samplers.grids import GridPoint, grid_point
from ditcore.samplers.guidance import Denoiser


def cumulative_integral(values: torch.Tensor, h: float) -> torch.Tensor:
    """int_{x_0}^{x_k} F over a uniform grid (spacing h, along dim 0), k = 0..K-1; fourth order for K >= 4.

    Each interval integrates the cubic through its four nearest nodes: h/24 (-F_{j-1} + 13 F_j + 13 F_{j+1} - F_{j+2})
    inside, one-sided cubics on the first and last interval; K = 3 uses quadratics, K = 2 the trapezoid.
    """
    k = values.shape[0]
    if k < 2:
        return torch.zeros_like(values)
    f = values
    if k == 2:
        parts = 0.5 * h * (f[:1] + f[1:])
    elif k == 3:
        parts = torch.stack([h / 12 * (5 * f[0] + 8 * f[1] - f[2]), h / 12 * (-f[0] + 8 * f[1] + 5 * f[2])])
    else:
        first = h / 24 * (9 * f[0] + 19 * f[1] - 5 * f[2] + f[3])
        last = h / 24 * (f[-4] - 5 * f[-3] + 19 * f[-2] + 9 * f[-1])
        inner = h / 24 * (-f[:-3] + 13 * f[1:-2] + 13 * f[2:-1] - f[3:])  # intervals 1 .. K-3
        parts = torch.cat([first[None], inner, last[None]])
    return torch.cat([torch.zeros_like(f[:1]), torch.cumsum(parts, 0)])


class V3Tables:
    """Cumulative EMS integrals L, S, I = int e^{L+S}, B = int e^{-S} b, C = int e^{L+S} B (float64, per node)."""

    def __init__(self, ems: EMS, device: torch.device | str) -> None:
        self.lambdas = ems.lambdas.to(device)
        self.h = float(ems.lambdas[1] - ems.lambdas[0])
        self.l = ems.l.to(device=device, dtype=torch.float64)
        s = ems.s.to(device=device, dtype=torch.float64)
        b = ems.b.to(device=device, dtype=torch.float64)
        self.L = cumulative_integral(self.l, self.h)
        self.S = cumulative_integral(s, self.h)
        self.I = cumulative_integral(torch.exp(self.L + self.S), self.h)
        self.B = cumulative_integral(torch.exp(-self.S) * b, self.h)
        self.C = cumulative_integral(torch.exp(self.L + self.S) * self.B, self.h)
        self._coeffs: dict[tuple[int, int, int], torch.Tensor] = {}

    def node(self, lam: float) -> int:
        """Nearest EMS node to lambda (clamped to the grid)."""
        k = round((lam - float(self.lambdas[0])) / self.h)
        return min(max(k, 0), self.lambdas.numel() - 1)

    def on_grid(self, lam: float) -> bool:
        """Whether lambda is (to rounding) an EMS node."""
        if not math.isfinite(lam):
            return False
        return abs(lam - float(self.lambdas[self.node(lam)])) <= 1e-6 * self.h

    def taylor_coefficient(self, k_s: int, k_t: int, n: int) -> torch.Tensor:
        """int_{lambda_s}^{lambda_t} e^{(L+S)(lambda) - (L+S)(lambda_s)} (lambda - lambda_s)^n / n! dlambda."""
        key = (k_s, k_t, n)
        if key not in self._coeffs:
            a = self.L[k_s : k_t + 1] + self.S[k_s : k_t + 1] - self.L[k_s] - self.S[k_s]
            dl = (self.lambdas[k_s : k_t + 1] - self.lambdas[k_s]).reshape(-1, *([1] * (a.dim() - 1)))
            self._coeffs[key] = cumulative_integral(torch.exp(a) * dl**n / math.factorial(n), self.h)[-1]
        return self._coeffs[key]


@dataclasses.dataclass
class _Point:
    k: int  # EMS node
    p: GridPoint
    x: torch.Tensor  # float64 state at this point
    f: torch.Tensor  # f = (1 - l) y - x0_hat (float64)


def _derivatives(lams: list[float], gs: list[torch.Tensor], pseudo: bool) -> list[torch.Tensor]:
    """g^(1..n) at lams[0] from values at n + 1 points: interpolating polynomial, or divided differences (pseudo)."""
    n = len(gs) - 1
    if pseudo:
        table = [gs]
        for i in range(1, n + 1):
            prev = table[-1]
            table.append([(prev[j] - prev[j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)])
        return [table[i][0] * math.factorial(i) for i in range(1, n + 1)]
    # g_j - g_0 = sum_i g^(i)/i! (lambda_j - lambda_0)^i, j = 1..n: a small Vandermonde solve per dimension
    r = torch.tensor(
        [[(lams[j] - lams[0]) ** i for i in range(1, n + 1)] for j in range(1, n + 1)], dtype=torch.float64
    )
    rhs = torch.stack([g - gs[0] for g in gs[1:]]).reshape(n, -1)
    sol = torch.linalg.solve(r.to(rhs.device), rhs).reshape(n, *gs[0].shape)
    return [sol[i - 1] * math.factorial(i) for i in range(1, n + 1)]


def _update(
    tab: V3Tables, pts: list[_Point], k_t: int, p_t: GridPoint, pseudo: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, f) at node k_t from anchor pts[0], g-derivatives from the other points (order = len(pts)); f is the
    Taylor-extrapolated f_theta at k_t (used to read off x0_hat where the model is not evaluated)."""
    s = pts[0]
    k_s = s.k
    cum_l, cum_s, cum_b, cum_c = tab.L, tab.S, tab.B, tab.C
    gs = [torch.exp(cum_s[k_s] - cum_s[q.k]) * q.f - torch.exp(cum_s[k_s]) * (cum_b[q.k] - cum_b[k_s]) for q in pts]
    y_s = s.x / s.p.alpha
    d_i = tab.I[k_t] - tab.I[k_s]
    y_t = (
        torch.exp(cum_l[k_s] - cum_l[k_t]) * y_s
        - torch.exp(-cum_l[k_t] - cum_s[k_s]) * d_i * gs[0]
        - torch.exp(-cum_l[k_t]) * (cum_c[k_t] - cum_c[k_s] - cum_b[k_s] * d_i)
    )
    g_t = gs[0]
    if len(pts) > 1:
        lams = [float(tab.lambdas[q.k]) for q in pts]
        h = float(tab.lambdas[k_t]) - lams[0]
        for n, g_n in enumerate(_derivatives(lams, gs, pseudo), start=1):
            y_t = y_t - torch.exp(cum_l[k_s] - cum_l[k_t]) * tab.taylor_coefficient(k_s, k_t, n) * g_n
            g_t = g_t + g_n * h**n / math.factorial(n)
    f_t = torch.exp(cum_s[k_t] - cum_s[k_s]) * (g_t + torch.exp(cum_s[k_s]) * (cum_b[k_t] - cum_b[k_s]))
    return p_t.alpha * y_t, f_t


def _from_below(
    tab: V3Tables, cur: GridPoint, x: torch.Tensor, x0: torch.Tensor, k_t: int, p_t: GridPoint
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order (x, f) at node k_t from a point below the EMS grid (lambda_s < lambda_0, e.g. pure noise).

    Below the grid the EMS are taken degenerate (l = 1, s = b = 0: DPM-Solver++), so L = lambda - lambda_0,
    I = e^{lambda - lambda_0} - 1, S = B = C = 0 there, e^{L_s} y_s = e^{-lambda_0} x_s / sigma_s and g = f_s = -x0_hat:
        y_t = e^{-L_t} (e^{-lambda_0} x_s / sigma_s + (I_t - I_s) x0_hat - C_t),   f_t = e^{S_t} (B_t - x0_hat).
    """
    lam0 = float(tab.lambdas[0])
    i_s = math.expm1(cur.log_snr - lam0) if math.isfinite(cur.log_snr) else -1.0
    y_t = torch.exp(-tab.L[k_t]) * (math.exp(-lam0) * x / cur.sigma + (tab.I[k_t] - i_s) * x0 - tab.C[k_t])
    return p_t.alpha * y_t, torch.exp(tab.S[k_t]) * (tab.B[k_t] - x0)


def sample_dpmsolver_v3(
    denoise: Denoiser,
    x: torch.Tensor,
    ts: torch.Tensor,
    process: Process,
    *,
    ems: EMS,
    order: int = 3,
    corrector: bool = True,
    pseudo_predictor: bool = False,
    pseudo_corrector: bool = True,
    lower_order_final: bool = True,
    **_: object,
) -> torch.Tensor:
    """DPM-Solver-v3 with one model evaluation per grid point before the clean end; order 1..3.

    The evaluation points are ts[:-1] moved onto EMS nodes. After the last one the solver takes one more
    predictor step to the last EMS node (the reference implementation's end point t_0) and returns
    x0_hat = (1 - l) y - f there, with f extrapolated by the same Taylor expansion (no extra evaluation).
    corrector: after each evaluation, redo the step just taken including the new point (order + 1 with the
    pseudo-order corrector, the paper's default c_pseudo). lower_order_final: the last steps use at most as
    many points as steps remain (reference implementation's stabilisation for few steps).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpmsolver-v3 order must be 1, 2 or 3, got {order}")
    if ems.l.dim() - 1 > x.dim() - 1:
        raise ValueError(f"EMS shape {ems.shape} does not broadcast to samples of shape {tuple(x.shape[1:])}")
    points = [grid_point(process, float(t)) for t in ts]
    if points[-1].sigma != 0.0:
        raise ValueError("the time grid must end on clean data (sigma = 0)")
    tab = V3Tables(ems, x.device)
    k_end = tab.lambdas.numel() - 1

    def at_node(k: int) -> GridPoint:
        return grid_point(process, float(process.t_from_log_snr(tab.lambdas[k])))

    out_dtype = x.dtype
    state = x.to(torch.float64)
    evals = points[:-1]
    # a start below the EMS grid (pure noise): first-order step with degenerate statistics below lambda_0;
    # a start inside the grid but off its nodes: a DPM-Solver++(1) step to the next node
    if not tab.on_grid(evals[0].log_snr):
        first = evals[0]
        x0 = denoise(state.to(out_dtype), first.t)[0].to(torch.float64)
        k1 = tab.node(evals[1].log_snr) if len(evals) > 1 else k_end
        p1 = at_node(k1)
        if first.log_snr < float(tab.lambdas[0]):
            state, f1 = _from_below(tab, first, state, x0, k1, p1)
        else:
            state, f1 = first_order_step(first, p1, state, x0), None
        if len(evals) == 1:
            return ((1.0 - tab.l[k1]) * state / p1.alpha - f1).to(out_dtype) if f1 is not None else x0.to(out_dtype)
        evals = [p1, *evals[2:]]
    # evaluation points on EMS nodes (duplicates after snapping are dropped)
    nodes: list[tuple[int, GridPoint]] = []
    for p in evals:
        k = tab.node(p.log_snr)
        if not nodes or k > nodes[-1][0]:
            nodes.append((k, p if tab.on_grid(p.log_snr) else at_node(k)))
    extend = nodes[-1][0] < k_end  # one more predictor step to the end of the statistics
    cache: list[_Point] = []
    p_order = 0
    for j, (k, p) in enumerate(nodes):
        x0 = denoise(state.to(out_dtype), p.t)[0].to(torch.float64)
        f = (1.0 - tab.l[k]) * (state / p.alpha) - x0
        cache.append(_Point(k=k, p=p, x=state, f=f))
        if corrector and len(cache) >= 2:
            c_order = min(p_order + (1 if pseudo_corrector else 0), len(cache))
            if c_order >= 2:
                prev, new = cache[-2], cache[-1]
                others = cache[-3 : -(c_order + 1) : -1] if c_order > 2 else []
                state = _update(tab, [prev, new, *others][:c_order], new.k, new.p, pseudo_corrector)[0]
                cache[-1] = _Point(k=new.k, p=new.p, x=state, f=new.f)  # keep f: no extra evaluation (UniC)
        remaining = len(nodes) - 1 - j + int(extend)  # predictor steps left, this one included
        if remaining == 0:
            return ((1.0 - tab.l[k]) * (state / p.alpha) - cache[-1].f).to(out_dtype)
        p_order = min(order, len(cache), remaining if lower_order_final else order)
        k_t, p_t = nodes[j + 1] if j + 1 < len(nodes) else (k_end, at_node(k_end))
        state, f_t = _update(tab, cache[::-1][:p_order], k_t, p_t, pseudo_predictor)
        if j + 1 == len(nodes):  # at the end of the statistics: x0_hat from the extrapolated f, then sigma = 0
            return ((1.0 - tab.l[k_t]) * (state / p_t.alpha) - f_t).to(out_dtype)
        cache = cache[-4:]  # a third-order predictor's corrector uses four points
    raise AssertionError("unreachable: the loop returns at the end of the grid")
