"""Quickstart stages 7-8: the champion served on Ray Serve (real HTTP calls), and a sample grid per model size."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

from jobs.quickstart.modes import GUIDANCE
from jobs.quickstart.runner import Context


def _conditions(ctx: Context) -> list[dict]:
    """What the served requests and the grids ask for: {"prompt": ...} (text models) or {"label": ...} (class)."""
    if ctx.mode.labels:
        return [{"label": int(y)} for y in ctx.mode.labels]
    return [{"prompt": p} for p in ctx.mode.prompts]


def _name(c: dict) -> str:
    return c.get("prompt") or f"label {c['label']}"


def serve_config(ctx: Context) -> dict:
    """What the served images depend on."""
    return {
        "conditions": _conditions(ctx),
        "steps": ctx.mode.serve_steps,
        "guidance": GUIDANCE,
        "version": ctx.results["promote"]["version"],
    }


def _deployment_overrides(steps: int) -> dict:
    """One small CPU replica of each deployment, on a laptop; replicas stop at once when deleted."""
    return {
        "Sampler": {
            "ray_actor_options": {"num_cpus": 1},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "user_config": {"default_steps": steps},
            "graceful_shutdown_wait_loop_s": 0.1,
        },
        "Ingress": {"autoscaling_config": {"max_replicas": 1}, "graceful_shutdown_wait_loop_s": 0.1},
    }


@contextlib.contextmanager
def _serve_driver_logs(level: int) -> Iterator[None]:
    """Serve's driver-side logger ("Started Serve ...", "Application ... is ready") at `level` for a while."""
    import ray.serve  # noqa: F401 - its import configures the logger (at INFO)

    logger = logging.getLogger("ray.serve")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _serve_log_tail(logs: Path, chars: int = 3000) -> str:
    """The end of the Serve replica logs (where a Sampler that failed to load says why)."""
    files = sorted(logs.glob("replica_*.log"), key=lambda p: p.stat().st_mtime) if logs.is_dir() else []
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-chars:]}" for p in files[-2:])


def stop_serve(ctx: Context) -> None:
    """Delete the Serve application of the serve stage (its replicas stop; Ray is stopped next anyway)."""
    name, ctx.serve_app = ctx.serve_app, None
    if not name:
        return
    from ray import serve

    try:
        with _serve_driver_logs(logging.WARNING):
            serve.delete(name)
    except Exception as exc:  # noqa: BLE001 - Ray is stopped next anyway, which ends the replicas too
        ctx.log(f"could not delete the Serve application {name!r}: {exc}")


def _generate_over_http(ctx: Context, url: str, out: Path) -> list[dict]:
    """One PNG per prompt, then several images in one JSON request, through POST /v1/generate."""
    import requests

    images = []
    conds = _conditions(ctx)
    for i, c in enumerate(conds[:4]):
        body = {**c, "seed": i, "steps": ctx.mode.serve_steps, "guidance": GUIDANCE}
        r = requests.post(f"{url}/v1/generate", json=body, timeout=300)
        if r.status_code != 200 or r.headers.get("content-type", "").split(";")[0] != "image/png":
            raise RuntimeError(f"POST /v1/generate {body} -> HTTP {r.status_code}: {r.text[:500]}")
        (out / f"{i}.png").write_bytes(r.content)
        images.append({"prompt": _name(c), "seed": i, "path": str(out / f"{i}.png")})
        ctx.log(f"POST /v1/generate {json.dumps(body)} -> {i}.png ({len(r.content)} bytes)")
    body = {**conds[0], "num_images": 4, "seed": 100, "format": "json"}
    r = requests.post(f"{url}/v1/generate", json=body, timeout=300)
    r.raise_for_status()
    for j, img in enumerate(r.json()["images"]):
        (out / f"multi_{j}.png").write_bytes(base64.b64decode(img["png_base64"]))
        images.append({"prompt": _name(conds[0]), "seed": img["seed"], "path": str(out / f"multi_{j}.png")})
    ctx.log(f"POST /v1/generate num_images=4 format=json -> seeds {[i['seed'] for i in images[-4:]]}")
    return images


def serve_run(ctx: Context) -> dict:
    """Deploy the champion on this quickstart's Ray (as `ditscale serve --champion` does), call it, stop it."""
    import requests

    from pipelines.infra.ray_runtime import free_port
    from serve.deploy import deploy, plan_deployment

    out = ctx.path("served")
    out.mkdir(parents=True, exist_ok=True)
    logs = ctx.path("logs", "serve")
    plan = plan_deployment(
        champion=True, host="127.0.0.1", port=free_port(), overrides=_deployment_overrides(ctx.mode.serve_steps)
    )
    ctx.ensure_ray()
    ctx.log(f"deploying the champion on Ray Serve at {plan.url} (Serve logs: {logs})")
    ctx.serve_app = plan.name
    try:
        try:
            with _serve_driver_logs(logging.WARNING):  # the stage prints its own lines; Serve's go to `logs`
                url = deploy(plan, num_gpus=0, ready_timeout=240, logging_config={"logs_dir": str(logs)})
        except Exception as exc:
            raise RuntimeError(f"deploying the champion on Ray Serve failed: {exc}\n{_serve_log_tail(logs)}") from exc
        model = requests.get(f"{url}/v1/model", timeout=60).json()
        ctx.log(f"serving {model.get('checkpoint', '?')}")
        images = _generate_over_http(ctx, url, out)
    finally:
        stop_serve(ctx)
        ctx.stop_ray()  # nothing after this stage needs Ray: give the cores back
    return {"url": url, "model": model, "images": images}


def samples_config(ctx: Context) -> dict:
    """What the grids depend on."""
    return {
        "conditions": _conditions(ctx),
        "n": ctx.mode.grid_images,
        "layout": "one column per condition",
        "steps": ctx.mode.serve_steps,
        "guidance": GUIDANCE,
    }


def samples_run(ctx: Context) -> dict:
    """Per model size: a grid from its checkpoint at the largest budget, through the generation pipeline."""
    from PIL import Image

    from jobs.scaling.points import read_points
    from pipelines.generation import GenerationPipeline, SamplerSettings, image_grid
    from pipelines.infra import tracking

    _, points = read_points(tracking.client(), parent_run_id=ctx.results["sweep"]["parent_run_id"])
    out = ctx.path("samples")
    out.mkdir(parents=True, exist_ok=True)
    best: dict[str, object] = {}
    for p in points:
        if p.checkpoint and (p.model not in best or p.budget_flops > best[p.model].budget_flops):
            best[p.model] = p
    grids = []
    settings = SamplerSettings(steps=ctx.mode.serve_steps, guidance=GUIDANCE)
    distinct = _conditions(ctx)
    conds = [distinct[i % len(distinct)] for i in range(ctx.mode.grid_images)]
    seeds = list(range(len(conds)))
    cols = min(len(distinct), len(conds))  # one column per prompt (or label), one row per round of seeds
    for model, p in sorted(best.items(), key=lambda kv: kv[1].params or 0):
        pipe = GenerationPipeline.from_checkpoint(p.checkpoint, device="cpu")
        path = out / f"{model.replace('/', '_')}.png"
        if "label" in conds[0]:
            images = pipe.generate_labels([c["label"] for c in conds], seeds, settings)
        else:
            images = pipe.generate_prompts([c["prompt"] for c in conds], seeds, settings)
        Image.fromarray(image_grid(images, cols=cols)).save(path)
        grids.append(
            {
                "model": model,
                "params": p.params,
                "budget_flops": p.budget_flops,
                "fid": p.fid,
                "checkpoint": p.checkpoint,
                "path": str(path),
            }
        )
        ctx.log(f"{model}: {path.name}")
    return {"grids": grids}
