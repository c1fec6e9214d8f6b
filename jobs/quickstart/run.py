"""The whole pipeline on the embedded defaults, one call: `run_quickstart(out, tiny=...)`.

built-in data -> small VAE -> FID feature net -> precompute (VAE latents + MiniLM text embeddings)
-> sweep (MM-DiT sizes x compute budgets) on a local Ray, FID at every point -> scaling-law fit -> champion
-> Ray Serve + HTTP -> sample grids -> report.md + report.json. Everything is tracked in a local MLflow store
(`<out>/mlflow.db`, artifacts in `<out>/mlruns`); the local Ray head and the Serve app are stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
import traceback
from pathlib import Path

from ditcore.config import ConfigError
from jobs.quickstart.modes import make_data_mode, make_mode, with_sweep_overrides
from jobs.quickstart.report import sweep_fid_words
from jobs.quickstart.runner import Context, fmt_seconds, run_stages
from jobs.quickstart.stages import stage_list
from jobs.scaling.summary import law_sentence
from pipelines.infra import storage

# Quickstart-only process settings: its Ray head and everything started from it inherit them.
QUICKSTART_ENV = {
    "RAY_DEDUP_LOGS": "0",
    # Serve's controller, proxy and replicas log to their files (<out>/logs/serve), not the console.
    "RAY_SERVE_LOG_TO_STDERR": "0",
    # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning torch threads starve the
    # other processes of the pipeline (measured: ~10x slower VAE steps under load).
    "OMP_WAIT_POLICY": "PASSIVE",
    # On 2 cores a trial's worker can wait minutes for a CPU held by another trial; Ray Train's 60 s default start
    # timeout would log a (retried) controller error for what is only queueing.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "900",
}


def set_environment(out: Path) -> None:
    """Offline/quiet env, the run's own MLflow store, a Ray auth token of its own, never a cluster's RAY_ADDRESS."""
    from pipelines.infra.ray_runtime import apply_ray_env

    apply_ray_env(QUICKSTART_ENV)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    os.environ.pop("RAY_ADDRESS", None)  # the quickstart always starts its own local Ray
    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        # Token auth with a token of this run's own, so ~/.ray/auth_token is never written.
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)


def _shutdown(ctx: Context) -> None:
    """Stop the Serve app and the local Ray this run started (nothing else)."""
    from jobs.quickstart.stages.serving import stop_serve

    with contextlib.suppress(Exception):
        stop_serve(ctx)
    with contextlib.suppress(Exception):
        ctx.stop_ray()


def print_summary(ctx: Context, seconds: float) -> None:
    """Where everything is, the fitted law, and the MLflow UI command."""
    fit = json.loads(Path(ctx.results["fit"]["report"]).read_text())
    law = fit.get("fid_law", {})
    print(f"\n{'=' * 100}\nquickstart ({ctx.mode.name}) finished in {fmt_seconds(seconds)}")
    if "error" not in law:
        print(f"fitted law: {law_sentence(law)}")
        ho = law.get("held_out") or {}
        if "rel_error" in ho:
            print(
                f"held-out check (fit without C={ho['compute']:.3g}): predicted FID {ho['predicted']:.3f}, "
                f"observed {ho['observed']:.3f} ({100 * ho['rel_error']:.1f}% error)"
            )
    p = ctx.results["promote"]
    print(f"champion: {p['model_name']} v{p['version']} ({p.get('model')}, {sweep_fid_words(p)})")
    print(f"report:   {ctx.results['report']['path']} (+ {Path(ctx.results['report']['json']).name})")
    print(f"plots:    {ctx.results['fit']['dir']}")
    print(f"served:   {len(ctx.results['serve']['images'])} images in {ctx.path('served')}")
    print(f"\nopen the MLflow UI:\n  mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}")


def run_quickstart(
    out: str | Path,
    *,
    tiny: bool = False,
    force: bool = False,
    data: str | None = None,
    train_encoders: bool = False,
    sweep_set: list[str] | None = None,
) -> int:
    """Run (or resume) every stage into `out`; 0 on success, 1 on a failed stage, 130 when interrupted.

    `data`: None for the built-in shapes, else "fashion-mnist", "emoji" or a path (jobs.quickstart.modes).
    `train_encoders`: train the built-in VAE and feature net here even where the shipped ones match.
    `sweep_set`: KEY=VALUE overrides of the sweep config (`with_sweep_overrides`)."""
    mode = with_sweep_overrides(make_data_mode(data, tiny) if data else make_mode(tiny), list(sweep_set or []))
    storage.refuse_remote(out, "--out", "the quickstart's outputs, MLflow store and report")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    set_environment(out)
    t0 = time.monotonic()
    ctx = Context(out, mode, t0, train_encoders=train_encoders)
    print(f"ditscale quickstart ({mode.name}) -> {out}", flush=True)
    rc = 0
    try:
        run_stages(ctx, stage_list(mode), force=force)
    except KeyboardInterrupt:
        print("\ninterrupted; finished stages are kept and reused on the next run", file=sys.stderr)
        rc = 130
    except Exception as exc:  # noqa: BLE001 - report which stage failed, keep the finished ones
        if not isinstance(exc, ConfigError):  # a bad setting is said in one line; anything else with its stack
            traceback.print_exc()
        print(f"\nquickstart failed after {ctx.elapsed()}: {exc}", file=sys.stderr)
        rc = 1
    finally:
        _shutdown(ctx)
    if rc == 0:
        print_summary(ctx, time.monotonic() - t0)
    return rc
