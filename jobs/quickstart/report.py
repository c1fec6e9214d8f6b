"""The quickstart's record of a run: `report.md` (plots, laws, sample grids, served images, point table) and
`report.json` beside it, whose keys are the project's public record of a run (docs/architecture.md, "Run record")."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jobs.quickstart.modes import PROMPTS
from jobs.quickstart.runner import Context
from jobs.scaling.summary import law_sentence


def _g(v: Any) -> str:
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return "-"


def _ci(law: dict, name: str) -> list[float] | None:
    ci = (law.get("ci") or {}).get(name)
    return [float(ci[0]), float(ci[1])] if ci else None


def run_record(ctx: Context, fit: dict) -> dict[str, Any]:
    """report.json: the champion, the fitted laws with intervals, the held-out error, stage timings."""
    law = fit.get("fid_law", {})
    front = fit.get("frontier") or []
    promo = ctx.results["promote"]
    point = promo.get("point") or {}
    iso = (fit.get("isoflop") or {}).get("fid") or {}
    n_opt = iso.get("n_opt_law") or {}
    held = (law.get("held_out") or {}) if "error" not in law else {}
    return {
        "mode": ctx.mode.name,
        "champion": {
            "model": promo.get("model"),
            "checkpoint": promo.get("checkpoint"),
            "fid": promo.get("fid"),
            "fid_network": point.get("fid_network"),
            "fid_samples": point.get("fid_samples"),
            "attr_accuracy": point.get("attr_acc"),
            "class_accuracy": point.get("class_acc"),
            "params": point.get("params"),
            "train_flops": point.get("flops"),
            "registered": f"{promo.get('model_name')}@{promo.get('alias')} v{promo.get('version')}",
        },
        "law": (
            {
                "form": law.get("form"),
                **{k: float(v) for k, v in law["params"].items()},
                "beta_ci": _ci(law, "beta"),
                "ci": law.get("ci"),
                "n_points": law.get("n_points"),
            }
            if "error" not in law
            else {"error": law["error"]}
        ),
        "heldout_error": held.get("rel_error"),
        "frontier_fid_first": front[0].get("fid") if front else None,
        "frontier_fid_last": front[-1].get("fid") if front else None,
        "n_opt_exponent": (n_opt.get("params") or {}).get("a"),
        "n_opt_exponent_ci": _ci(n_opt, "a") if n_opt else None,
        "stage_seconds": dict(ctx.seconds),
        "sweep": {
            "parent_run_id": ctx.results["sweep"]["parent_run_id"],
            "experiment": ctx.results["sweep"]["experiment"],
        },
    }


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
        "All fitted laws (bootstrap intervals, held-out check without the largest budget):",
        "",
        "```",
        ctx.results["fit"]["laws"],
        "```",
        "",
    ]


def _samples_section(ctx: Context, rel: Any) -> list[str]:
    lines = ["## Samples per model", ""]
    prompts = "; ".join(f'"{p}"' for p in PROMPTS)
    for g in ctx.results["samples"]["grids"]:
        fid = f"FID {g['fid']:.2f}, " if g.get("fid") is not None else ""
        lines += [
            f"### {g['model']}",
            "",
            f"{fid}{_g(g.get('params'))} parameters, trained to "
            f"{_g(g.get('budget_flops'))} FLOPs; prompts, left to right: {prompts}",
            "",
            f"![{g['model']}]({rel(g['path'])})",
            "",
        ]
    return lines


def _served_section(ctx: Context, rel: Any) -> list[str]:
    promo = ctx.results["promote"]
    lines = [
        "## Served champion",
        "",
        f"Registered model `{promo['model_name']}` version {promo['version']} (alias `{promo['alias']}`): "
        f"{promo.get('model')}, FID {_g(promo.get('fid'))}, checkpoint `{promo['checkpoint']}`.",
        "",
        "Images returned by `POST /v1/generate` on the Ray Serve deployment:",
        "",
        "| prompt | seed | image |",
        "|---|---|---|",
    ]
    return lines + [f"| {i['prompt']} | {i['seed']} | ![]({rel(i['path'])}) |" for i in ctx.results["serve"]["images"]]


def render_report(ctx: Context, fit: dict, n_points: int, table: str, tracking_uri: str) -> str:
    """The Markdown report: scaling plot, fitted law with intervals, sample grids, served images, point table."""
    rel = lambda p: os.path.relpath(p, ctx.out)  # noqa: E731 - links relative to the report
    lines = [
        f"# ditscale quickstart report ({ctx.mode.name})",
        "",
        f"{n_points} points: {len(fit.get('models', []))} MM-DiT sizes x {len(fit.get('budgets', []))} "
        "compute budgets on the built-in shapes data, FID at every point. Compute C = training FLOPs "
        "(multiply-add = 2 FLOPs, training step = 3 x forward).",
        "",
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
    md.write_text(render_report(ctx, fit, len(points), trial_table(to_dicts(points)), tracking.resolve_tracking_uri()))
    js.write_text(json.dumps(run_record(ctx, fit), indent=2, default=float) + "\n")
    _log_run(ctx, [md, js])
    ctx.log(f"wrote {md} and {js.name}")
    return {"path": str(md), "json": str(js)}
