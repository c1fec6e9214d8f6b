"""The quickstart's record of a run: `report.md` (plots, laws, sample grids, served images, point table) and
`report.json` beside it, whose keys are the project's public record of a run (docs/architecture.md, "Run record")."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ditcore.scaling.frontier import interior_count
from jobs.quickstart.runner import Context
from jobs.quickstart.stages.scaling import SWEEP_RECORD_KEYS
from jobs.scaling.plots import finite_or_none
from jobs.scaling.summary import ci_method_name, law_sentence
from pipelines.infra.code import env_tags, environment, environment_words


def _g(v: Any) -> str:
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return "-"


def _ci(law: dict, name: str) -> list[float] | None:
    ci = (law.get("ci") or {}).get(name)
    ends = [finite_or_none(v) for v in ci] if ci else []
    return ends if len(ends) == 2 and None not in ends else None


def _floor_bound(law: dict) -> dict[str, Any]:
    """report.json's `law.floor_at_bound` and, when the floor sits at its bound (the lowest frontier FID),
    `law.free_floor`: the same law with the floor free (beta, beta_ci, FID_inf, heldout_error, F, rejected)."""
    fb = law.get("floor_bound")
    if not fb:
        return {}
    out: dict[str, Any] = {"floor_at_bound": bool(fb.get("at_bound"))}
    if fb.get("at_bound"):
        free = fb.get("free") or {}
        params = free.get("params") or {}
        out["free_floor"] = {
            "beta": params.get("beta"),
            "beta_ci": (free.get("ci") or {}).get("beta"),
            "FID_inf": params.get("FID_inf"),
            "FID_inf_ci": (free.get("ci") or {}).get("FID_inf"),
            "heldout_error": free.get("held_out_rel_error"),
            "F": fb.get("F"),
            "rejected": fb.get("rejected"),
        }
    return out


def _champion_record(promo: dict, point: dict) -> dict[str, Any]:
    """report.json's champion: the promoted checkpoint and its budget point's FID, accuracy and size."""
    return {
        "model": promo.get("model"),
        "checkpoint": promo.get("checkpoint"),
        "fid": promo.get("fid"),
        "fid_network": point.get("fid_network"),
        "fid_samples": point.get("fid_samples"),
        "fid_se": point.get("fid_se"),
        "fid_ci": point.get("fid_ci"),
        "attr_accuracy": point.get("attr_acc"),
        "class_accuracy": point.get("class_acc"),
        "params": point.get("params"),
        "train_flops": point.get("flops"),
        "registered": f"{promo.get('model_name')}@{promo.get('alias')} v{promo.get('version')}",
    }


def _law_record(fit: dict) -> dict[str, Any]:
    """report.json's law and what the grid shows: the frontier law, held-out error, frontier ends, N*(C) / D*(C)."""
    law = fit.get("fid_law", {})
    front = fit.get("frontier") or []
    iso = (fit.get("isoflop") or {}).get("fid") or {}
    n_opt = iso.get("n_opt_law") or {}
    held = (law.get("held_out") or {}) if "error" not in law else {}
    return {
        "law": (
            {
                "form": law.get("form"),
                **{k: finite_or_none(v) for k, v in law["params"].items()},
                "beta_ci": _ci(law, "beta"),
                "ci": law.get("ci"),
                "ci_open": law.get("ci_open"),  # [lo, hi] ends that reached the search range, not the data
                "n_points": law.get("n_points"),
                **_floor_bound(law),
            }
            if "error" not in law
            # not fitted: the stable keys stay, null, beside the reason
            else {**dict.fromkeys(("form", "A", "beta", "FID_inf", "beta_ci", "ci", "n_points")), "error": law["error"]}
        ),
        "heldout_error": held.get("rel_error"),
        "frontier_fid_first": front[0].get("fid") if front else None,
        "frontier_fid_last": front[-1].get("fid") if front else None,
        "n_opt_exponent": fit.get("n_opt_exponent", (n_opt.get("params") or {}).get("a")),
        "n_opt_exponent_ci": fit.get("n_opt_exponent_ci", _ci(n_opt, "a") if n_opt else None),
        # [minima bracketed by the sizes tried, budgets]: the rest are bounds (the best size is an edge one)
        "n_opt_interior": interior_count(iso["budgets"]) if iso.get("budgets") else None,
        "d_opt_exponent": fit.get("d_opt_exponent"),
        "d_opt_exponent_ci": fit.get("d_opt_exponent_ci"),
    }


def _run_record(ctx: Context, fit: dict) -> dict[str, Any]:
    """report.json's record of the run itself: goodput and time, stage seconds, encoders, the sweep stage."""
    good = ctx.results["sweep"].get("goodput") or {}
    sweep = ctx.results["sweep"]
    return {
        # when this record was written (UTC): a report.json older than the run's last stage is not this run's
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "goodput": good.get("goodput"),
        "time_share": good.get("time_share"),
        "peak_flops": good.get("peak_flops"),  # what goodput divides by: the better of the readings below
        "peak_flops_measured": good.get("peak_flops_measured"),  # before and after the sweep's trials
        "fit_sensitivity": fit.get("fid_law", {}).get("sampling_noise"),  # the law refitted, FIDs redrawn in noise
        "stage_seconds": dict(ctx.seconds),
        # The software and machine that ran it: the same code and settings can round differently on another CPU,
        # GPU or torch, so every number above is checked against a run on the same environment.
        "env": environment(),
        # The VAE and FID feature net: "shipped" (assets/encoders/builtin) or "trained" in this run, with the
        # weights' sha256 (the network every FID of the run is measured with).
        "encoders": _encoders(ctx),
        "sweep": {
            "parent_run_id": sweep["parent_run_id"],
            "experiment": sweep["experiment"],
            # What the sweep stage ran this time (goodput and time_share cover only these trials): a rerun skips
            # trials already done and evaluates, without training, runs trained before.
            **{k: sweep.get(k) for k in SWEEP_RECORD_KEYS},
        },
    }


def _encoders(ctx: Context) -> dict[str, dict]:
    """report.json `encoders`: the VAE and the sweep's FID feature net, each {source, sha256, shipped_sha256}. With
    real data the feature net is the classifier trained on its labels in this run (the network of the sweep's
    FIDs; the standard FID's Inception is named with that FID)."""
    out = {
        ("feature_net" if k == "features" else k): {
            key: ctx.results[k].get(key) for key in ("source", "sha256", "shipped_sha256")
        }
        for k in ("vae", "features")
        if k in ctx.results
    }
    clf = ctx.results.get("classifier")
    if "feature_net" not in out and clf and clf.get("path"):
        from ditcore.files import file_digest

        weights = Path(clf["path"]) / "model.safetensors"
        out["feature_net"] = {
            "source": "trained",
            "sha256": file_digest(weights) if weights.is_file() else None,
            "shipped_sha256": None,
            "role": "the classifier trained on the data's labels",
        }
    return out


def run_record(ctx: Context, fit: dict) -> dict[str, Any]:
    """report.json: the champion, the fitted laws with intervals, the held-out error, stage timings."""
    promo = ctx.results["promote"]
    point = promo.get("point") or {}
    rec = {"mode": ctx.mode.name, "champion": _champion_record(promo, point), **_law_record(fit)}
    rec = _with_real_data(ctx, point, {**rec, **_run_record(ctx, fit)})
    rec["goals"] = goals(rec, fit, builtin=ctx.mode.data is None)
    return rec


# The quickstart's goals on the built-in data (docs/fit.md, "Goals"): (comparison, threshold).
GOALS: dict[str, tuple[str, float]] = {
    "goodput": (">=", 0.5),  # training FLOPs / (sweep wall x measured peak)
    "attr_accuracy": (">=", 0.8),  # the champion's caption-attribute accuracy (built-in data)
    "frontier_drop": ("<=", 0.25),  # frontier FID at the largest budget / at the smallest
    "beta_ci": ("<=", 0.30),  # the farther end of beta's 95% interval, as a share of beta
    "heldout_error": ("<=", 0.10),  # relative error of the law refitted without the largest budget
    "wall": ("<=", 900.0),  # seconds, install included
}


def _verdict(value: float | None, goal: str) -> bool | None:
    if value is None:
        return None
    op, threshold = GOALS[goal]
    return value >= threshold if op == ">=" else value <= threshold


def goals(rec: dict[str, Any], fit: dict, builtin: bool = True) -> dict[str, dict[str, Any]]:
    """report.json `goals`: per goal {value, threshold, met, note}; `met` is true / false, or null when the run
    cannot say (a value not measured, or the install time the wall goal counts). A law goal that holds only because
    the floor sits at its bound says so, with the free floor's number."""
    out: dict[str, dict[str, Any]] = {}

    def put(goal: str, value: float | None, note: str = "", judge: bool = True) -> None:
        verdict = _verdict(value, goal) if judge else None
        out[goal] = {
            "value": value,
            "threshold": GOALS[goal][1] if goal in GOALS else None,
            "met": verdict,
            "note": note or (None if value is not None else "not measured in this run"),
        }

    put("goodput", finite_or_none(rec.get("goodput")))
    if builtin:
        put("attr_accuracy", finite_or_none((rec.get("champion") or {}).get("attr_accuracy")))
    first, last = finite_or_none(rec.get("frontier_fid_first")), finite_or_none(rec.get("frontier_fid_last"))
    put("frontier_drop", last / first if first and last is not None else None)
    law = rec.get("law") or {}
    beta, ci = finite_or_none(law.get("beta")), law.get("beta_ci")
    free = law.get("free_floor") or {}
    bound = "conditional on FID_inf at its bound, the lowest frontier FID" if law.get("floor_at_bound") else ""

    def spread(b: float | None, interval: Any) -> float | None:
        if not b or not interval or None in interval:
            return None
        return max(b - interval[0], interval[1] - b) / abs(b)

    free_spread = spread(finite_or_none(free.get("beta")), free.get("beta_ci"))
    put(
        "beta_ci",
        spread(beta, ci),
        f"{bound}; with the floor free: {free_spread:.1%}" if bound and free_spread is not None else bound,
    )
    free_held = finite_or_none(free.get("heldout_error"))
    put(
        "heldout_error",
        finite_or_none(rec.get("heldout_error")),
        f"{bound}; with the floor free: {free_held:.1%}" if bound and free_held is not None else bound,
    )
    out["champion"] = _champion_goal(rec, fit)
    run_s = sum(v for v in (rec.get("stage_seconds") or {}).values() if finite_or_none(v) is not None) or None
    # The stages alone: over the limit is a miss; under it the run cannot say, the install being outside it.
    put(
        "wall",
        run_s,
        "the stages' seconds, a reused stage counting the time it took when it ran; the goal counts the install "
        "too: time `make quickstart` from a fresh clone",
        judge=run_s is not None and run_s > GOALS["wall"][1],
    )
    return out


def _champion_goal(rec: dict[str, Any], fit: dict) -> dict[str, Any]:
    """Not the smallest model, unless the isoFLOP data put the optimum there (the smallest size is the best one at
    the largest budget)."""
    from ditcore.scaling.frontier import minimum_kind

    sizes = [v for v in (finite_or_none(p) for p in (fit.get("models") or {}).values()) if v is not None]
    params = finite_or_none((rec.get("champion") or {}).get("params"))
    goal = {"value": (rec.get("champion") or {}).get("model"), "threshold": None, "met": None, "note": None}
    if params is None or not sizes:
        goal["note"] = "not measured in this run"
    elif params > min(sizes):
        goal.update(met=True, note="not the smallest size tried")
    else:
        budgets = ((fit.get("isoflop") or {}).get("fid") or {}).get("budgets") or []
        if not budgets:  # no isoFLOP fit to say where the optimum lies
            goal["note"] = "the smallest size; no isoFLOP data to say whether the optimum lies there"
            return goal
        last = max(budgets, key=lambda b: b["budget_flops"])
        smallest_best = minimum_kind(last) == "smallest"
        goal.update(
            met=smallest_best,
            note=(
                "the smallest size, and the isoFLOP minimum at the largest budget is the smallest size too, a "
                "bound since no smaller model was tried"
                if smallest_best
                else "the smallest size, though the isoFLOP data do not put the optimum there"
            ),
        )
    return goal


def _with_real_data(ctx: Context, point: dict, rec: dict[str, Any]) -> dict[str, Any]:
    """Real data: the champion's FID is the standard one (Inception, with its interval); the sweep's own FID
    (data set's classifier features) stays as champion.sweep_fid; + the floor and the classifier's accuracy."""
    std = ctx.results.get("standard_fid")
    if ctx.mode.data is None or not std:
        return rec
    c = rec["champion"]
    c.update(
        sweep_fid=c["fid"],
        sweep_fid_network=c["fid_network"],
        sweep_fid_samples=c["fid_samples"],
        fid=std["fid"],
        fid_network=std["fid_network"],
        fid_network_name=std["network"],
        fid_samples=std["n_samples"],
        fid_se=std["fid_se"],
        fid_ci=std["fid_ci"],
        fid_ci_resamples=std.get("n_boot"),  # the half-samples behind fid_ci and fid_floor_ci
        fid_reference_count=std["reference_count"],
    )
    rec["fid_floor"] = std["floor"]["fid"]
    rec["fid_floor_ci"] = std["floor"]["fid_ci"]
    rec["fid_floor_samples"] = std["floor"]["n_samples"]
    rec["classifier_test_accuracy"] = ctx.results["classifier"]["test_accuracy"]
    rec["data"] = {"name": ctx.mode.data.name, "conditioning": ctx.mode.data.conditioning}
    return rec


def _data_name(ctx: Context) -> str:
    return f"the {ctx.mode.data.name} data" if ctx.mode.data is not None else "the built-in shapes data"


def _reuse_words(sweep: dict[str, Any]) -> str:
    """'' for a sweep stage that trained its whole grid, else what it reused (its goodput covers the rest)."""
    done, evaluate_only = sweep.get("trials_done_before") or 0, sweep.get("trials_evaluate_only") or 0
    if not done and not evaluate_only:
        return ""
    trained = (sweep.get("trials_run") or 0) - evaluate_only
    parts = [f"{trained} trial(s) trained"] if trained else []
    if evaluate_only:
        parts.append(f"{evaluate_only} trial(s) only evaluated runs trained before")
    if done:
        parts.append(f"{done} trial(s) finished before and skipped")
    return "this invocation: " + "; ".join(parts)


def _code_words(sweep: dict[str, Any]) -> list[str]:
    """[] unless runs of the grid were trained (in part) by other training code or on other software: then a caveat
    for each."""
    lines, n, soft = [], sweep.get("runs_from_other_code") or 0, sweep.get("runs_on_other_software") or 0
    if n:
        lines.append(
            f"- **{n} training run(s) of this grid were trained, in part or whole, by other training code** than this "
            f"run's (fingerprint {sweep.get('code_fingerprint')}; the sweep's log names the others): runs are matched "
            "by their settings, so they were reused or resumed as they were. If that change alters training or "
            "evaluation, rerun with `--force`."
        )
    if soft:
        lines.append(
            f"- **{soft} training run(s) of this grid were trained, in part or whole, on other software** (Python, "
            "torch or numpy versions; the sweep's log names the versions, each run's result.json `software` lists "
            "its own): reused or resumed as they were, the same code and settings can round differently there. To "
            "retrain them here, rerun with `--force`."
        )
    return lines


def _record_section(rec: dict | None) -> list[str]:
    """The headline numbers of report.json (the record this run writes, not a file a past run left), in words."""
    if not rec:
        return []
    c, lines = rec["champion"], ["## Headline numbers", ""]
    fid = f"FID {_g(c.get('fid'))}"
    if c.get("fid_ci"):
        fid += f" [{_g(c['fid_ci'][0])}, {_g(c['fid_ci'][1])}]"
        if c.get("fid_ci_resamples"):
            fid += f" (95%, {c['fid_ci_resamples']} half-samples)"
    network = c.get("fid_network_name") or c.get("fid_network")  # the standard network by its name, else the path
    lines.append(f"- champion {c.get('model')}: {fid} ({c.get('fid_samples')} samples, network {network})")
    for key, name in (("attr_accuracy", "caption-attribute accuracy"), ("class_accuracy", "class accuracy")):
        if c.get(key) is not None:
            lines.append(f"- {name} of the champion's samples: {c[key]:.1%}")
    if rec.get("fid_floor") is not None:
        n_floor, n_model = rec.get("fid_floor_samples"), c.get("fid_samples")
        same = "the same N" if n_floor == n_model else f"N = {n_floor}: the test split is smaller"
        same += "" if n_floor == n_model else ", so the floor is biased up"
        lines.append(
            f"- the data's own floor (real test images, {n_floor} of them, same network; {same}): "
            f"FID {_g(rec['fid_floor'])}"
        )
    if rec.get("classifier_test_accuracy") is not None:
        lines.append(f"- classifier accuracy on the real test split: {rec['classifier_test_accuracy']:.1%}")
    enc = rec.get("encoders") or {}
    if enc:
        words = {"vae": "VAE", "feature_net": "FID feature net"}
        lines.append(
            "- encoders: "
            + "; ".join(f"{words[k]} {e.get('source')} (sha256 {str(e.get('sha256'))[:12]})" for k, e in enc.items())
            + (
                " (shipped: assets/encoders/builtin, trained by `make encoders` with the config, data and code of "
                "this run; `--train-encoders` trains them in the run)"
                if any(e.get("source") == "shipped" for e in enc.values())
                else ""
            )
        )
    reuse = _reuse_words(rec.get("sweep") or {})
    if rec.get("goodput") is not None:
        share = ", ".join(f"{k[:-2]} {v:.0%}" for k, v in (rec.get("time_share") or {}).items())
        peak = f" ({rec['peak_flops'] / 1e9:.0f} GFLOP/s)" if rec.get("peak_flops") else ""
        lines.append(
            f"- sweep goodput {rec['goodput']:.1%} of the measured machine peak{peak}; time: {share}"
            + (f" (goodput and time cover {reuse})" if reuse else "")
        )
    elif reuse:
        lines.append(f"- sweep goodput not measured: nothing to run ({reuse})")
    else:
        lines.append("- sweep goodput not measured (no training FLOPs or no machine peak in the sweep's record)")
    if rec.get("env"):
        lines.append(f"- ran on: {environment_words(rec['env'])}")
    return lines + _code_words(rec.get("sweep") or {}) + [""] + _goals_section(rec.get("goals") or {})


_GOAL_WORDS = {
    "goodput": ("sweep goodput", lambda v: f"{v:.1%}", "at least {:.0%}"),
    "attr_accuracy": ("champion's caption-attribute accuracy", lambda v: f"{v:.1%}", "at least {:.0%}"),
    "frontier_drop": ("frontier FID, largest budget / smallest", lambda v: f"{v:.3f}", "at most {:g}"),
    "beta_ci": ("beta's 95% interval, farther end from beta", lambda v: f"{v:.1%} of beta", "at most {:.0%}"),
    "heldout_error": ("held-out error of the law", lambda v: f"{v:.1%}", "at most {:.0%}"),
    "champion": ("champion", str, "not the smallest size unless the isoFLOP data put the optimum there"),
    "wall": ("quickstart wall time", lambda v: f"{v:.0f} s", "at most {:.0f} s with the install"),
}


def _goals_section(goals: dict[str, dict]) -> list[str]:
    """report.md's goals table: each goal's value, threshold and verdict (met / missed / cannot say), with notes."""
    if not goals:
        return []
    lines = ["## Goals", "", "| goal | value | threshold | verdict |", "|---|---|---|---|"]
    for name, g in goals.items():
        label, fmt, want = _GOAL_WORDS.get(name, (name, str, "{}"))
        value = "not measured" if g.get("value") is None else fmt(g["value"])
        verdict = {True: "met", False: "**missed**", None: "cannot say"}[g.get("met")]
        threshold = want.format(g["threshold"]) if g.get("threshold") is not None else want
        note = f" ({g['note']})" if g.get("note") else ""
        lines.append(f"| {label} | {value} | {threshold} | {verdict}{note} |")
    return lines + [""]


def _law_section(ctx: Context, fit: dict, rel: Any) -> list[str]:
    law = fit.get("fid_law", {})
    lines = [
        "## Scaling law",
        "",
        f"FID law not fitted: {law['error']}" if "error" in law else f"**{law_sentence(law)}**",
        "",
    ]
    lines += [f"![{Path(p).stem}]({rel(p)})" for p in ctx.results["fit"]["plots"]]
    return lines + [
        "",
        f"All fitted laws (intervals: {ci_method_name(law) if 'error' not in law else 'as each law says'} for the "
        "power laws, bootstrap for N*(C) and D*(C); "
        "held-out check without the largest budget):",
        "",
        "```",
        ctx.results["fit"]["laws"],
        "```",
        "",
    ]


def _samples_section(ctx: Context, rel: Any) -> list[str]:
    lines = ["## Samples per model", ""]
    prompts = (
        "; ".join(f'"{p}"' for p in ctx.mode.prompts)
        if not ctx.mode.labels
        else "class labels " + ", ".join(map(str, ctx.mode.labels))
    )
    for g in ctx.results["samples"]["grids"]:
        fid = f"FID {g['fid']:.2f}, " if g.get("fid") is not None else ""
        lines += [
            f"### {g['model']}",
            "",
            f"{fid}{_g(g.get('params'))} parameters, trained to "
            f"{_g(g.get('budget_flops'))} FLOPs; one column per {'label' if ctx.mode.labels else 'prompt'}, "
            f"left to right: {prompts}; each row other seeds",
            "",
            f"![{g['model']}]({rel(g['path'])})",
            "",
        ]
    return lines


def sweep_fid_words(promo: dict) -> str:
    """The promoted point's FID as the sweep measured it, with its network and sample count (with real data the
    report's headline FID is another one: the standard Inception FID)."""
    point = promo.get("point") or {}
    net = point.get("fid_network")
    n = point.get("fid_samples")
    where = ", ".join(x for x in (f"network {net}" if net else "", f"{n} samples" if n else "") if x)
    return f"sweep FID {_g(promo.get('fid'))}" + (f" ({where})" if where else "")


def _served_section(ctx: Context, rel: Any) -> list[str]:
    promo = ctx.results["promote"]
    lines = [
        "## Served champion",
        "",
        f"Registered model `{promo['model_name']}` version {promo['version']} (alias `{promo['alias']}`): "
        f"{promo.get('model')}, {sweep_fid_words(promo)}, checkpoint `{promo['checkpoint']}`.",
        "",
        "Images returned by `POST /v1/generate` on the Ray Serve deployment:",
        "",
        "| prompt | seed | image |",
        "|---|---|---|",
    ]
    return lines + [f"| {i['prompt']} | {i['seed']} | ![]({rel(i['path'])}) |" for i in ctx.results["serve"]["images"]]


def render_report(ctx: Context, fit: dict, n_points: int, table: str, tracking_uri: str, record: dict) -> str:
    """The Markdown report: headline numbers of `record` (report.json's), scaling plot, fitted law with intervals,
    sample grids, served images, point table."""
    rel = lambda p: os.path.relpath(p, ctx.out)  # noqa: E731 - links relative to the report
    lines = [
        f"# ditscale quickstart report ({ctx.mode.name})",
        "",
        f"{n_points} points: {len(fit.get('models', []))} {'DiT' if ctx.mode.labels else 'MM-DiT'} sizes x "
        f"{len(fit.get('budgets', []))} compute budgets on {_data_name(ctx)}, FID at every point. Compute C = "
        "training FLOPs (multiply-add = 2 FLOPs, training step = 3 x forward).",
        "",
        *_record_section(record),
    ]
    lines += _law_section(ctx, fit, rel) + _samples_section(ctx, rel) + _served_section(ctx, rel)
    lines += [
        "",
        "## Trials",
        "",
        "```",
        table,
        "```",
        "",
        "## Reproduce / explore",
        "",
        "```bash",
        f"ditscale report --parent-run {ctx.results['sweep']['parent_run_id']} --tracking-uri {tracking_uri}",
        f"mlflow ui --backend-store-uri {tracking_uri}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _log_run(ctx: Context, files: list[Path]) -> None:
    """One MLflow run for the quickstart itself: stage timings, the report and everything it shows."""
    from pipelines.infra import tracking

    client = tracking.client()
    exp = tracking.ensure_experiment(client, "ditscale-quickstart-runs")
    rid = client.create_run(
        exp,
        run_name=f"quickstart-{ctx.mode.name}",
        tags={
            tracking.ROLE_TAG: tracking.ROLE_QUICKSTART,
            "ditscale.sweep_parent_run": ctx.results["sweep"]["parent_run_id"],
            **{k: str(v) for k, v in env_tags(environment()).items()},  # where it ran
        },
    ).info.run_id
    client.log_param(rid, "mode", ctx.mode.name)
    tracking.log_metrics(client, rid, {f"stage_s.{k}": v for k, v in ctx.seconds.items()}, 0)
    for f in files:
        client.log_artifact(rid, str(f))
    for sub in ("fit", "samples", "served"):
        if ctx.path(sub).is_dir():
            client.log_artifacts(rid, str(ctx.path(sub)), artifact_path=sub)
    client.set_terminated(rid, "FINISHED")


def report_run(ctx: Context) -> dict:
    """Write report.md and report.json, and record the quickstart run in MLflow."""
    from jobs.scaling.points import read_points, to_dicts
    from jobs.scaling.summary import trial_table
    from pipelines.infra import tracking

    _, points = read_points(tracking.client(), parent_run_id=ctx.results["sweep"]["parent_run_id"])
    fit = json.loads(Path(ctx.results["fit"]["report"]).read_text())
    md, js = ctx.path("report.md"), ctx.path("report.json")
    from pipelines.infra import storage

    # Standard JSON: a NaN anywhere (an accuracy never measured) is null, never a NaN token readers reject.
    record = json.dumps(storage.json_safe(run_record(ctx, fit)), indent=2, default=float, allow_nan=False) + "\n"
    # report.md quotes this run's record as report.json will hold it (not a report.json a past run left).
    text = render_report(
        ctx, fit, len(points), trial_table(to_dicts(points)), tracking.resolve_tracking_uri(), json.loads(record)
    )
    storage.write_bytes(str(js), record.encode())  # each whole or not at all
    storage.write_bytes(str(md), text.encode())
    _log_run(ctx, [md, js])
    ctx.log(f"wrote {md} and {js.name}")
    return {"path": str(md), "json": str(js)}
