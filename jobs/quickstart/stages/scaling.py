"""Quickstart stages 4-6: the scaling sweep, the fitted laws, the promoted champion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jobs.quickstart.runner import Context, record_upstream, recorded_upstream
from jobs.quickstart.runner import upstream_fingerprint as runner_upstream
from pipelines.infra.config_files import REPO_ROOT

TRAIN_YAML = REPO_ROOT / "configs" / "train" / "tiny.yaml"
EXPERIMENT = "ditscale-quickstart"
# Beside the sweep's own records: the hash of the stages it was run after (data, encoders, precompute).
UPSTREAM_MARKER = "quickstart_upstream.json"
# Upstream stages whose outputs no trial reads (the FID Inception serves the champion's standard FID, after the sweep).
_NOT_SWEEP_INPUTS = {"inception"}
# What the sweep stage ran this time (report.json `sweep.*`): trials run, only evaluated, skipped; the fingerprint
# of the training code it ran and how many finished runs it reused that other training code, or other Python /
# torch / numpy versions, trained.
SWEEP_RECORD_KEYS = (
    "trials_run",
    "trials_evaluate_only",
    "trials_done_before",
    "code_fingerprint",
    "runs_from_other_code",
    "runs_on_other_software",
)


def _sweep_overrides(ctx: Context) -> list[str]:
    real = []
    if ctx.mode.data is not None:  # score every point with the data's classifier (features + class accuracy)
        clf = ctx.results["classifier"]["path"]
        real = [f"base.eval.classifier={clf}"] + (["base.model.preset=DiT-T/2"] if ctx.mode.labels else [])
    return [
        f"name={ctx.mode.name}",
        f"output={ctx.path('sweeps')}",
        f"base.data.manifest={ctx.results['precompute']['path']}",
        f"mlflow.experiment={EXPERIMENT}-{ctx.mode.name}",
        f"base_config={TRAIN_YAML}",
        *real,
        *ctx.mode.sweep,
    ]


def sweep_config(ctx: Context) -> dict:
    """The sweep YAML, this run's overrides and the train config every trial starts from (`base_config`'s YAML with
    `base` over it), so an edit of configs/train/tiny.yaml reruns the sweep as an edit of the sweep YAML does."""
    from jobs.sweep.driver import load_sweep_config
    from jobs.sweep.grid import sweep_base

    overrides = _sweep_overrides(ctx)
    base = sweep_base(load_sweep_config(str(REPO_ROOT / ctx.mode.sweep_yaml), overrides))
    return {"yaml": (REPO_ROOT / ctx.mode.sweep_yaml).read_text(), "overrides": overrides, "base": base}


def upstream_fingerprint(ctx: Context) -> str:
    """The stages run before the sweep that it reads (runner.upstream_fingerprint)."""
    return runner_upstream(ctx, skip=frozenset(_NOT_SWEEP_INPUTS))


def keep_sweep_dir(sweep_root: Path, upstream: str, force: bool = False) -> str | None:
    """Why `sweep_root` must be cleared before this sweep, or None to keep it.

    `force` (the quickstart's --force) clears any sweep directory: every trial trains again. Otherwise a sweep
    directory is kept only when it was made after the same upstream stages (data, encoders, precompute: `upstream`,
    `upstream_fingerprint`) and its MLflow parent run is still in the store. The sweep then finishes an interrupted
    grid, skips the trials already done and evaluates the runs it trained before where only evaluation settings
    changed (training ids; docs/train.md). Trial ids hash the manifest's path, not its content: after other data the
    old trials would pass as this data's, so the directory goes."""
    if not sweep_root.exists():
        return None
    if force:
        return "--force reruns every stage"
    was = recorded_upstream(sweep_root / UPSTREAM_MARKER)
    if was is None:
        return "it has no record of the data it was run on"
    if was != upstream:
        return "it was run on other data or encoders (an upstream stage changed)"
    sweep_json = sweep_root / "sweep.json"
    if sweep_json.is_file():
        from pipelines.infra import tracking

        run_id = json.loads(sweep_json.read_text()).get("run_id")
        if not run_id:
            return "it names no MLflow parent run"
        try:
            run = tracking.client(check=False).get_run(run_id)
        except Exception as e:  # a store without the run: its finished trials would be recorded nowhere
            if not tracking.is_gone(e):
                raise  # the store itself failed (locked, needs an upgrade): keep everything, say what
            return f"its MLflow parent run {run_id} is not in the store"
        if run.info.lifecycle_stage != "active":  # deleted in the UI (with its experiment): it cannot be re-opened
            return f"its MLflow parent run {run_id} was deleted"
    return None


def sweep_run(ctx: Context) -> dict:
    """Run the models x budgets grid on the quickstart's Ray; every trial must finish.

    The sweep directory of an earlier run on the same data is kept (`keep_sweep_dir`), so an interrupted sweep
    resumes and a change of evaluation settings evaluates the runs already trained."""
    from jobs.sweep.driver import format_table, load_sweep_config, run_sweep

    sweep_root = ctx.path("sweeps", ctx.mode.name)
    upstream = upstream_fingerprint(ctx)
    why = keep_sweep_dir(sweep_root, upstream, force=ctx.force)
    if why is not None:
        ctx.log(f"clearing {sweep_root}: {why}")
        shutil.rmtree(sweep_root)
    elif sweep_root.exists():
        ctx.log(f"keeping {sweep_root} (same data): finished trials and trained runs are reused")
    sweep_root.mkdir(parents=True, exist_ok=True)
    record_upstream(sweep_root / UPSTREAM_MARKER, upstream, stages=ctx.hashes)
    cfg = load_sweep_config(str(REPO_ROOT / ctx.mode.sweep_yaml), _sweep_overrides(ctx))
    ctx.log(
        f"{len(cfg.models)} models x {len(cfg.budgets)} budgets ({', '.join(f'{b:.2g}' for b in sorted(cfg.budgets))}"
        f" FLOPs), mode={cfg.mode}, MLflow experiment {cfg.mlflow.experiment!r}"
    )
    ctx.ensure_ray()
    out = run_sweep(cfg)
    print(format_table(out), flush=True)
    if not out["complete"]:
        raise RuntimeError(
            f"sweep incomplete: trials not finished: {out['failed']} (failed or interrupted: see above); rerun the "
            "same command to finish it: finished trials are kept"
        )
    return {
        "experiment": out["experiment"],
        "parent_run_id": out["parent_run_id"],
        "sweep_dir": out["sweep_dir"],
        "num_points": sum(len(r["points"]) for r in out["trials"]),
        "wall_s": out["wall_s"],
        "goodput": out.get("goodput"),
        **{k: out[k] for k in SWEEP_RECORD_KEYS},
    }


def fit_config(ctx: Context) -> dict:
    """Bootstrap resamples of this mode."""
    return {"n_boot": ctx.mode.n_boot}


def fit_run(ctx: Context) -> dict:
    """Fit the laws to the sweep's record; plots and the report go to <out>/fit."""
    from jobs.scaling.fit import REPORT_NAME, run_fit
    from jobs.scaling.summary import format_laws

    report, out, written = run_fit(
        parent_run_id=ctx.results["sweep"]["parent_run_id"], out_dir=str(ctx.path("fit")), n_boot=ctx.mode.n_boot
    )
    laws = format_laws(report)
    print(laws, flush=True)
    return {
        "dir": str(out),
        "report": str(out / REPORT_NAME),
        "laws": laws,
        "plots": sorted(str(p) for p in written),
    }


def promote_run(ctx: Context) -> dict:
    """Register the best checkpoint as `ditscale@champion`."""
    from jobs.scaling.points import read_points
    from jobs.scaling.promote import promote
    from pipelines.infra import tracking

    client = tracking.client()
    parent, points = read_points(client, parent_run_id=ctx.results["sweep"]["parent_run_id"])
    res = promote(
        client,
        points,
        extra_tags={"experiment": ctx.results["sweep"]["experiment"], "parent_run_id": parent.info.run_id},
    )
    ctx.log(
        f"{'registered' if res['created'] else 'reused'} {res['model_name']} version {res['version']} -> "
        f"alias '{res['alias']}': {res['model']}, FID {res['fid']:.3f}, checkpoint {res['checkpoint']}"
    )
    return res
