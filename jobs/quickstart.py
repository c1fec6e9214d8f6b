"""`ditscale quickstart`: the whole pipeline on the embedded defaults, one command, on a laptop.

built-in data -> small VAE -> FID feature net -> precompute (VAE latents + MiniLM text embeddings)
-> 3x3 sweep (3 tiny MM-DiT sizes x 3 compute budgets) on a local Ray, FID at every point
-> scaling-law fit -> promote the champion -> deploy it on Ray Serve -> generate images over HTTP
-> report (Markdown: scaling plot, fitted law with intervals, a sample grid per model, the trial table).

Each stage writes a marker `<out>/stages/<stage>.json` holding the hash of its resolved config (which
includes the results of the stages it depends on); a re-run reuses every stage whose marker matches and
whose outputs still exist, and `--force` reruns everything. Everything is tracked in a local MLflow
store (`<out>/mlflow.db`, artifacts in `<out>/mlruns`).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]

# Prompts the served champion draws over HTTP and the per-model sample grids use (the built-in grammar).
PROMPTS = [
    "a large red circle",
    "a small blue square at the top left",
    "a green triangle at the bottom right",
    "a large yellow square and a small red circle",
]


# ----------------------------------------------------------------------------------------------------------
# Modes: the full quickstart (<= 15 min on 2 cores) and --tiny (<= 3 min, what the README test runs).


@dataclass
class Mode:
    """Sizes of every stage for one quickstart mode."""

    name: str
    image_size: int
    num_images: int  # built-in images encoded by the precompute
    vae: dict[str, Any]  # overrides of TrainVAEConfig
    features: dict[str, Any]  # overrides of TrainFeaturesConfig
    precompute: list[str]  # k=v overrides of configs/precompute/builtin.yaml
    sweep: list[str]  # k=v overrides of configs/sweep/tiny.yaml
    serve_steps: int
    grid_images: int  # images per model in the report's sample grids
    notes: dict[str, Any] = field(default_factory=dict)


def make_mode(tiny: bool) -> Mode:
    """The settings of the tiny or the full quickstart."""
    if tiny:
        return Mode(
            name="tiny", image_size=32, num_images=256,
            vae={}, features={}, precompute=[], sweep=[], serve_steps=8, grid_images=4,
        )
    return Mode(
        name="full", image_size=32, num_images=2048,
        vae={}, features={}, precompute=[], sweep=[], serve_steps=20, grid_images=8,
    )


# ----------------------------------------------------------------------------------------------------------
# Stage runner: banners with elapsed time, markers with config hashes, reuse.


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


@dataclass
class Stage:
    """One step of the quickstart: `run(ctx) -> result` (JSON-able); `config(ctx)` is what its hash covers."""

    name: str
    title: str
    config: Callable[["Context"], dict]
    run: Callable[["Context"], dict]
    outputs: Callable[[dict], list[str]] = lambda result: []  # paths that must still exist to reuse it


class Context:
    """Shared state of one quickstart run: output dir, mode, results of finished stages, Ray/Serve handles."""

    def __init__(self, out: Path, mode: Mode, t0: float):
        self.out = out
        self.mode = mode
        self.t0 = t0
        self.results: dict[str, dict] = {}
        self.hashes: dict[str, str] = {}
        self.ray_started = False
        self.serve_started = False
        self.http_port: int | None = None

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def log(self, msg: str) -> None:
        print(f"      {msg}", flush=True)

    def elapsed(self) -> str:
        return _fmt_s(time.monotonic() - self.t0)

    def ensure_ray(self) -> None:
        """Start the local Ray this quickstart owns (once), sized for the machine."""
        import ray

        if ray.is_initialized():
            return
        num_cpus = max(2, os.cpu_count() or 2)
        self.log(f"starting a local Ray ({num_cpus} CPUs)")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 configure_logging=True, logging_level="WARNING",
                 runtime_env={"env_vars": {k: os.environ[k] for k in _CHILD_ENV if k in os.environ}})
        self.ray_started = True


# Environment that every Ray worker of the quickstart inherits.
_CHILD_ENV = ("MLFLOW_TRACKING_URI", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
              "TOKENIZERS_PARALLELISM", "MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED", "TQDM_DISABLE")


def _marker(ctx: Context, stage: Stage) -> Path:
    return ctx.path("stages", f"{stage.name}.json")


def run_stages(ctx: Context, stages: list[Stage], force: bool) -> None:
    """Run (or reuse) every stage in order, printing a banner with the elapsed time for each."""
    n = len(stages)
    for i, stage in enumerate(stages, 1):
        cfg = stage.config(ctx)
        digest = _hash({"stage": stage.name, "config": cfg, "upstream": ctx.hashes})
        marker = _marker(ctx, stage)
        prev = json.loads(marker.read_text()) if marker.is_file() else None
        reusable = (not force and prev is not None and prev.get("config_hash") == digest
                    and all(Path(p).exists() for p in stage.outputs(prev["result"])))
        if reusable:
            ctx.results[stage.name] = prev["result"]
            ctx.hashes[stage.name] = digest
            print(f"==> [{i}/{n}] {stage.title}: reused (finished {prev['finished_at']}, "
                  f"took {_fmt_s(prev['seconds'])}, config {digest})   [{ctx.elapsed()}]", flush=True)
            continue
        print(f"\n==> [{i}/{n}] {stage.title}   [{ctx.elapsed()}]", flush=True)
        t = time.monotonic()
        result = stage.run(ctx)
        seconds = time.monotonic() - t
        ctx.results[stage.name] = result
        ctx.hashes[stage.name] = digest
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "stage": stage.name, "config_hash": digest, "config": cfg, "result": result, "seconds": seconds,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2, default=str))
        tmp.replace(marker)
        print(f"    done: {stage.title} in {_fmt_s(seconds)}   [{ctx.elapsed()}]", flush=True)


# ----------------------------------------------------------------------------------------------------------
# The stages.


def _stage_list() -> list[Stage]:
    return []


# ----------------------------------------------------------------------------------------------------------
# CLI.


def _set_env(out: Path) -> None:
    """Quiet/offline env, the local MLflow store, and a Ray auth token of this run's own."""
    for key, value in {
        "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
        "RAY_DEDUP_LOGS": "0",
    }.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    # The quickstart always starts its own local Ray, never joins one named by RAY_ADDRESS.
    os.environ.pop("RAY_ADDRESS", None)
    # Token auth on the local cluster with a token of this run's own, so ~/.ray/auth_token is never written.
    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ditscale quickstart",
        description="Run the whole pipeline locally on the built-in defaults: data -> VAE -> feature net -> "
                    "precompute -> 3x3 sweep with FID -> scaling-law fit -> champion -> Ray Serve -> report. "
                    "Re-running reuses finished stages.",
    )
    p.add_argument("--tiny", action="store_true", help="reduced sizes (about 3 minutes) for tests and a first look")
    p.add_argument("--out", default="outputs/quickstart", help="output directory (default: outputs/quickstart)")
    p.add_argument("--force", action="store_true", help="rerun every stage even if its marker matches")
    return p


def main(argv: list[str] | None = None) -> int:
    """`ditscale quickstart [--tiny] [--out DIR] [--force]`."""
    opts = _parser().parse_args(argv)
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _set_env(out)
    mode = make_mode(opts.tiny)
    t0 = time.monotonic()
    ctx = Context(out, mode, t0)
    print(f"ditscale quickstart ({mode.name}) -> {out}", flush=True)
    rc = 0
    try:
        run_stages(ctx, _stage_list(), force=opts.force)
    except KeyboardInterrupt:
        print("\ninterrupted; finished stages are kept and reused on the next run", file=sys.stderr)
        rc = 130
    except Exception as exc:  # report which stage failed, keep the finished ones
        traceback.print_exc()
        print(f"\nquickstart failed after {ctx.elapsed()}: {exc}", file=sys.stderr)
        rc = 1
    finally:
        _shutdown(ctx)
    if rc == 0:
        _print_summary(ctx, time.monotonic() - t0)
    return rc


def _shutdown(ctx: Context) -> None:
    """Stop the Serve app and the local Ray this run started (nothing else)."""
    with contextlib.suppress(Exception):
        if ctx.serve_started:
            from ray import serve

            serve.shutdown()
    with contextlib.suppress(Exception):
        if ctx.ray_started:
            import ray

            ray.shutdown()


def _print_summary(ctx: Context, seconds: float) -> None:
    print(f"\nquickstart finished in {_fmt_s(seconds)}")


if __name__ == "__main__":
    raise SystemExit(main())
