"""muP learning-rate transfer, measured: the best learning rate per width with and without muP (`ditscale mup-report`).

Input: a learning-rate x width sweep's points (configs/sweep/mup-transfer.yaml), each carrying its trial's
hyper-parameters (`hparams["optim.lr"]`, `hparams["optim.mup"]`) and a final validation loss. The width of a point
is its `width` key, else `hparams["model.overrides.hidden_size"]`, else the `-w<width>` suffix of its model name.
Per (setting, width, lr) the point with the most training steps is the final loss; a width is judged at its longest
run's step, and an lr whose run ended earlier (its longer run FAILED, e.g. diverged) is left out and named
(`stopped_early`, and `missing_lrs`); a missing or non-finite loss counts as worse than any finite one. A run that
diverged in the pipeline ends FAILED with no points: given as an entry with a `failed` reason (the CLI reads the
sweep's FAILED trials from MLflow), one that diverged counts as worse than any finite loss and one that failed for
another reason is left out (`missing_lrs`); both are named with their reasons (`failed_runs`).

Per setting ("standard" / "mup"): the grid optimum per width (`optimal_lr`, a map width -> lr), a sub-grid estimate
(a parabola in log lr through the optimum and its two neighbours; the grid value at an edge), how many grid steps
the optimum moves across widths (`max_shift_steps`) and `within_one_step` (max_shift_steps <= 1; None with one
width), `missing_lrs` (grid values a width has no run for: the verdict is then over the runs present), the transfer
criterion of Yang et al. 2022 at this grid's resolution. `drift_per_doubling` is the least-squares slope of
log2(sub-grid optimum) vs log2(width): 0 when the optimum stays put, about -1 when it falls like 1/width.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ditcore.scaling import FitError
from pipelines.infra import storage

REPORT_NAME = "mup_report.json"
PLOT_NAME = "mup_lr_vs_loss.png"
SETTINGS = ("standard", "mup")
_DIVERGED = ("diverged", "non-finite loss")  # the training loop's reasons for a run it stopped as diverged
_WIDTH_RE = re.compile(r"(?:^|[-_])w(\d+)(?:$|[-_/\[])")


def _width(p: dict) -> int:
    hp = p.get("hparams") or {}
    for v in (p.get("width"), hp.get("model.overrides.hidden_size"), hp.get("model.hidden_size")):
        if v is not None:
            return _positive_width(v, p)
    m = _WIDTH_RE.search(str(p.get("model") or ""))
    if m:
        return _positive_width(m.group(1), p)
    raise FitError(
        f"point of model {p.get('model')!r} (run {p.get('run_id')}): no width; give a `width` key, "
        "hparams['model.overrides.hidden_size'] or a model name ending in -w<width>"
    )


def _positive_width(v: Any, p: dict) -> int:
    try:
        w = int(v)
    except (TypeError, ValueError):
        w = 0
    if w < 1 or isinstance(v, bool):
        raise FitError(f"point of model {p.get('model')!r} (run {p.get('run_id')}): width {v!r} is not a size >= 1")
    return w


def _loss(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.inf
    return f if math.isfinite(f) else math.inf


def _flag(v: Any, i: int) -> bool:
    """A point's muP flag: a bool, 0/1, or the strings true/false (a YAML or CLI value); anything else is an error
    (`bool("false")` is True)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise FitError(f"point {i}: hparams['optim.mup'] must be true or false, got {v!r}")


def loss_table(
    points: list[dict], stopped: dict | None = None, failed: dict | None = None
) -> dict[str, dict[int, dict[float, float]]]:
    """{setting: {width: {lr: final validation loss}}} (inf for a diverged or missing loss). Entries with a
    `failed` key (a FAILED trial: no points) give no loss: one whose reason says it diverged (or names a non-finite
    loss) counts as inf, the others are left out; both are named in `failed` ({setting: {width: [{"lr", "reason",
    "diverged"}]}}) unless a finished run gives that (setting, width, lr)."""
    if not isinstance(points, list) or not points:
        raise FitError("no points: the muP report needs the points of a learning-rate x width sweep")
    final, failures = _final_points(points)
    diverged = {k for k, reason in failures.items() if any(w in reason for w in _DIVERGED)}
    table = _longest_runs(final, diverged, stopped)
    _add_failures(table, failures, diverged, failed)
    return table


def _point_key(p: Any, i: int) -> tuple[str, int, float]:
    """(setting, width, lr) of point `i`, each checked."""
    if not isinstance(p, dict):
        raise FitError(f"point {i}: not an object ({type(p).__name__} {p!r})")
    hp = p.get("hparams") or {}
    if not isinstance(hp, dict):
        raise FitError(f"point {i}: 'hparams' must be an object, got {type(hp).__name__} {hp!r}")
    lr = hp.get("optim.lr", p.get("lr"))
    try:
        ok = lr is not None and not isinstance(lr, bool) and math.isfinite(float(lr)) and float(lr) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FitError(f"point {i} (model {p.get('model')!r}): needs a finite positive hparams['optim.lr'], got {lr!r}")
    setting = "mup" if _flag(hp.get("optim.mup", p.get("mup", False)), i) else "standard"
    return setting, _width(p), float(lr)


def _final_points(points: list) -> tuple[dict[tuple, tuple[int, float]], dict[tuple, str]]:
    """({key: (step, loss) of its point with the most steps}, {key: failure reason}) by (setting, width, lr); an
    error when two runs (trials, or models without one; FAILED or not) give one key."""
    final: dict[tuple, tuple[int, float]] = {}
    failures: dict[tuple, str] = {}
    owners: dict[tuple, tuple] = {}  # key -> (model, trial, failed) of the first entry seen there
    for i, p in enumerate(points):
        key = _point_key(p, i)
        here = (p.get("model"), p.get("trial_id"), "failed" in p)
        first = owners.setdefault(key, here)
        if (first[1] or first[0]) != (here[1] or here[0]):  # one run: its trial id (points and its FAILED record
            # name the model differently), or its model
            raise FitError(
                f"point {i}: {_run_words(here)} and {_run_words(first)} both give the {key[0]} setting at width "
                f"{key[1]} and lr {key[2]:g}; the report needs one run per (setting, width, lr): pass the points of "
                "one learning-rate x width sweep"
            )
        if "failed" in p:
            failures.setdefault(key, str(p["failed"]))
            continue
        step = int(p.get("step") or 0)
        if key not in final or step >= final[key][0]:
            final[key] = (step, _loss(p.get("val_loss")))
    return final, failures


def _run_words(run: tuple) -> str:
    model, trial, failed = run
    return f"{'a FAILED run of ' if failed else ''}model {model!r} (trial {trial})"


def _longest_runs(final: dict, diverged: set, stopped: dict | None) -> dict[str, dict[int, dict[float, float]]]:
    """The table of the points at each width's longest run's step: the optimum of a width compares losses at one
    length. A run that ended earlier (its longer run FAILED) is left out and named in `stopped`, unless that longer
    run diverged (`_add_failures` counts it as worse)."""
    longest: dict[tuple, int] = {}
    for (setting, width, _), (step, _) in final.items():
        longest[(setting, width)] = max(step, longest.get((setting, width), step))
    table: dict[str, dict[int, dict[float, float]]] = {}
    for key, (step, loss) in sorted(final.items()):
        setting, width, lr = key
        if step < longest[(setting, width)]:
            if key not in diverged and stopped is not None:
                stopped.setdefault(setting, {}).setdefault(str(width), []).append(lr)
            continue
        table.setdefault(setting, {}).setdefault(width, {})[lr] = loss
    return table


def _add_failures(table: dict, failures: dict, diverged: set, failed: dict | None) -> None:
    """FAILED runs into `table` (a divergence: inf, worse than any finite loss at any length) and `failed`, unless
    the width's longest run gives that lr's loss (the trial failed in part: a branch, its evaluation)."""
    for (setting, width, lr), reason in sorted(failures.items()):
        if lr in table.get(setting, {}).get(width, {}):
            continue
        if (setting, width, lr) in diverged:
            table.setdefault(setting, {}).setdefault(width, {})[lr] = math.inf
        if failed is not None:
            entry = {"lr": lr, "reason": reason, "diverged": (setting, width, lr) in diverged}
            failed.setdefault(setting, {}).setdefault(str(width), []).append(entry)


def _subgrid(lrs: list[float], losses: list[float], k: int) -> float:
    """Vertex of the parabola in log lr through the grid optimum k and its neighbours (the grid value at an edge)."""
    if k == 0 or k == len(lrs) - 1 or not all(math.isfinite(v) for v in losses[k - 1 : k + 2]):
        return lrs[k]
    x = np.log(lrs[k - 1 : k + 2])
    a, b, _ = np.polyfit(x, losses[k - 1 : k + 2], 2)
    return float(np.exp(np.clip(-b / (2 * a), x[0], x[2]))) if a > 0 else lrs[k]


def _setting(widths: dict[int, dict[float, float]], grid: list[float], name: str) -> dict[str, Any]:
    opt, sub, idx, losses, at_edge, lost = {}, {}, {}, {}, [], []
    for w in sorted(widths):
        lrs = sorted(widths[w])
        vals = [widths[w][lr] for lr in lrs]
        if not any(math.isfinite(v) for v in vals):
            lost.append(int(w))  # no optimum to compare: named, the other widths still are
            continue
        k = int(np.argmin(vals))
        opt[str(w)], sub[str(w)], idx[str(w)] = lrs[k], _subgrid(lrs, vals, k), grid.index(lrs[k])
        losses[str(w)] = {f"{lr:g}": (v if math.isfinite(v) else None) for lr, v in zip(lrs, vals)}
        if k in (0, len(lrs) - 1):  # the edge of the rates this width ran (a width that skipped some has its own)
            at_edge.append(int(w))
    if not opt:
        raise FitError(f"{name}: every run diverged at every width {lost} (no finite validation loss)")
    shift = max(idx.values()) - min(idx.values()) if len(idx) >= 2 else None
    missing = {str(w): [lr for lr in grid if lr not in widths[w]] for w in sorted(widths)}
    ws = np.log2([int(w) for w in sub])
    slope = float(np.polyfit(ws, np.log2(list(sub.values())), 1)[0]) if len(ws) >= 2 else None
    return {
        "optimal_lr": opt,
        "optimal_lr_subgrid": sub,
        "optimal_lr_index": idx,
        "max_shift_steps": shift,
        "within_one_step": None if shift is None else shift <= 1,
        "drift_per_doubling": slope,
        "optimum_at_grid_edge": at_edge,
        "loss": losses,
        "missing_lrs": {w: m for w, m in missing.items() if m},
        "every_run_diverged": lost,
    }


def _statement(name: str, s: dict, grid: list[float]) -> str:
    opt = ", ".join(f"{w}: {lr:g}" for w, lr in s["optimal_lr"].items())
    if s["within_one_step"] is None:
        verdict = "cannot be compared (one width only)"
    else:
        verdict = "stays within one grid step" if s["within_one_step"] else f"moves {s['max_shift_steps']} grid steps"
    edge = ""
    if s["optimum_at_grid_edge"]:
        edge = (
            f"; at widths {s['optimum_at_grid_edge']} the optimum is the lowest or highest rate that width ran, so "
            "the true one may lie out"
        )
    drift = "" if s["drift_per_doubling"] is None else f" (sub-grid drift {s['drift_per_doubling']:+.2f} log2/doubling)"
    gaps = ""
    if s["every_run_diverged"]:
        gaps += f"; at widths {s['every_run_diverged']} every run diverged (no optimum)"
    if s["missing_lrs"]:
        gaps += "; runs missing (width: lrs) " + ", ".join(f"{w}: {m}" for w, m in s["missing_lrs"].items())
    return f"{name}: best lr per width {{{opt}}}; the optimum {verdict} across widths{drift}{edge}{gaps}."


def mup_transfer_report(points: list[dict]) -> dict[str, Any]:
    """The transfer report of a learning-rate x width sweep (module doc): {"standard": {...}, "mup": {...}, ...}."""
    stopped: dict[str, dict[str, list[float]]] = {}
    failed: dict[str, dict[str, list[dict]]] = {}
    table = loss_table(points, stopped, failed)
    ran = {e["lr"] for by_width in failed.values() for entries in by_width.values() for e in entries}
    grid = sorted({lr for ws in table.values() for w in ws.values() for lr in w} | ran)
    widths = sorted({w for ws in table.values() for w in ws})
    if len(widths) < 2 or len(grid) < 2:
        raise FitError(f"need >= 2 widths and >= 2 learning rates, got widths {widths} and learning rates {grid}")
    report: dict[str, Any] = {"widths": widths, "lr_grid": grid, "lr_step": grid[1] / grid[0], "statements": []}
    for name in SETTINGS:
        if name in table:
            report[name] = _setting(table[name], grid, name)
            report["statements"].append(_statement(name, report[name], grid))
    if stopped:
        report["stopped_early"] = stopped
        for name, by_width in stopped.items():
            shown = ", ".join(f"{w}: {[f'{lr:g}' for lr in lrs]}" for w, lrs in by_width.items())
            report["statements"].append(
                f"{name}: runs that ended before their width's longest run (left out; diverged or stopped): {shown}"
            )
    if failed:
        report["failed_runs"] = failed
        for name, by_width in failed.items():
            shown = "; ".join(
                f"{w}: {e['lr']:g} "
                + ("diverged, counted as worse than any finite loss" if e["diverged"] else "left out")
                + f" ({_short(e['reason'])})"
                for w, entries in by_width.items()
                for e in entries
            )
            report["statements"].append(f"{name}: FAILED runs (width: lr): {shown}")
    missing = [s for s in SETTINGS if s not in table]
    if missing:
        report["statements"].append(f"no points for {', '.join(missing)} (hparams optim.mup); nothing to compare")
    return report


def _short(reason: str, n: int = 160) -> str:
    return reason if len(reason) <= n else reason[: n - 3] + "..."


def plot_mup(report: dict, path: str | Path) -> Path:
    """Validation loss vs learning rate, one curve per width, one panel per setting; the optimum marked."""
    from jobs.scaling.plots import _pyplot, _save

    plt = _pyplot()
    names = [s for s in SETTINGS if s in report]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), sharey=True, squeeze=False)
    widths = report["widths"]
    for ax, name in zip(axes[0], names):
        s = report[name]
        for i, w in enumerate(widths):
            rows = s["loss"].get(str(w))
            if not rows:
                continue
            col = plt.cm.viridis(i / max(1, len(widths) - 1))
            pts = [(float(lr), v) for lr, v in rows.items() if v is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=col, label=f"width {w}")
            best = s["optimal_lr"][str(w)]
            ax.plot([best], [rows[f"{best:g}"]], "*", color=col, ms=14, mec="k")
        verdict = {None: "one width", True: "within one step"}.get(
            s["within_one_step"], f"moves {s['max_shift_steps']} steps"
        )
        ax.set(xscale="log", xlabel="learning rate", title=f"{name}: optimum {verdict}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final validation loss")
    return _save(fig, Path(path))


def write_mup_report(points: list[dict], out_dir: str | Path) -> tuple[dict, list[Path]]:
    """Report + plot into `out_dir` (the report is computed before anything is written)."""
    report = mup_transfer_report(points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_mup(report, out / PLOT_NAME)
    storage.write_bytes(str(out / REPORT_NAME), json.dumps(report, indent=2).encode())  # whole or not at all
    return report, [out / REPORT_NAME, plot]
