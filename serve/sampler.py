"""The Sampler deployment: one loaded generation pipeline per replica, requests batched with `@serve.batch`.

The checkpoint (a path / s3:// URI, or the MLflow `champion`) loads through pipelines.generation, the same
pipeline `ditscale sample` and evaluation use, so a served image equals theirs for the same seed and settings, up
to the float rounding of a batched forward pass (a pixel one level apart; docs/serve.md).
Failures never leak exception text to clients: the replica logs the exception with the request id and the
ingress answers 500 with that id only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import math
import secrets
import time
from typing import Any

import numpy as np
from ray import serve

from ditcore.config import ConfigError
from pipelines.infra.storage import json_safe
from serve.app_args import AppArgs
from serve.batching import SampleJob, SamplerUserConfig, group_compatible
from serve.schema import MAX_SEED

logger = logging.getLogger("ray.serve")

SAMPLER_NAME = "Sampler"


def resolve_checkpoint(args: AppArgs) -> tuple[str, dict | None]:
    """(checkpoint URI, registry record or None) for a path/URI or the MLflow alias (`champion` by default)."""
    if not args.champion:
        return str(args.checkpoint), None
    from pipelines.infra.tracking import resolve_champion

    record = dict(resolve_champion(model_name=args.model_name, tracking_uri=args.tracking_uri, alias=args.alias))
    if not record.get("checkpoint"):
        raise RuntimeError(f"registered model {args.model_name!r}@{args.alias} has no checkpoint URI: {record}")
    return str(record["checkpoint"]), record


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H,W,3] -> PNG bytes (deterministic encoder settings)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _first_number(*sources: tuple[dict | None, tuple[str, ...]]) -> float | None:
    """First value among (mapping, keys) pairs that parses as a finite float."""
    for mapping, keys in sources:
        for key in keys:
            try:
                value = float((mapping or {})[key])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                return value
    return None


def model_info(pipe: Any, registry: dict | None) -> dict:
    """Content of GET /v1/model (without the run-time defaults): what is served and what it cost to train."""
    from ditcore.flops import flops_summary

    text_tokens = pipe.manifest.text.max_length if pipe.manifest is not None and pipe.manifest.text else None
    try:
        flops = dict(
            flops_summary(pipe.model.config, text_tokens=text_tokens)
            if text_tokens
            else flops_summary(pipe.model.config)
        )
    except Exception as exc:  # noqa: BLE001 - FLOPs are informative only; never block serving on them
        logger.warning("flops_summary failed: %s", exc)
        flops = {}
    reg = registry or {}
    tags = reg.get("tags") if isinstance(reg.get("tags"), dict) else {}
    return {
        "checkpoint": pipe.checkpoint_uri,
        "conditioning": pipe.conditioning,
        "num_classes": pipe.num_classes,
        "image_size": pipe.image_size,
        "config": pipe.config,
        "params": int(flops.get("params") or sum(p.numel() for p in pipe.model.parameters())),
        "flops": flops or None,
        "fid": _first_number((reg, ("fid",)), (tags, ("fid",)), (pipe.state, ("fid", "best_fid"))),
        "train_flops": _first_number(
            (reg, ("train_flops",)), (tags, ("train_flops",)), (pipe.state, ("train_flops", "flops"))
        ),
        # JSON has no NaN: Starlette refuses to send one, which would turn GET /v1/model into a 500
        "state": json_safe(pipe.state),
        "registry": json_safe(json.loads(json.dumps(registry, default=str))) if registry else None,
    }


@serve.deployment(name=SAMPLER_NAME, max_ongoing_requests=32, max_queued_requests=64, ray_actor_options={"num_cpus": 1})
class Sampler:
    """Holds the pipeline; groups concurrent requests into batched sampler calls with @serve.batch."""

    def __init__(self, args: AppArgs) -> None:
        from pipelines.generation import GenerationPipeline

        t0 = time.monotonic()
        self.args = AppArgs.model_validate(args)
        checkpoint, self.registry = resolve_checkpoint(self.args)
        self.pipe = GenerationPipeline.from_checkpoint(
            checkpoint,
            device=self.args.device,
            use_ema=self.args.use_ema,
            dtype=self.args.dtype,
            compile=self.args.compile,
        )
        self.config = SamplerUserConfig()
        self.config_error: str | None = None  # a refused user_config update, until a good one (GET /v1/model)
        self._configured = False  # a user_config was applied: later bad ones are refused without stopping
        self._apply_batching()
        logger.info(
            "Sampler loaded %s (%s) in %.1fs on %s",
            checkpoint,
            self.pipe.conditioning,
            time.monotonic() - t0,
            self.pipe.device,
        )

    def reconfigure(self, config: dict) -> None:
        """Apply user_config: default steps/sampler/guidance and batching limits, without reloading the model.

        An unknown key or a wrong type raises ConfigError naming it at the replica's first user_config (it does not
        start) and is refused later (Serve stops a replica whose reconfigure raises, and restarts it with the same
        config). A default sampler this checkpoint cannot run (accepted, it made every request without `sampler` a
        422 blaming the client) is never raised: the rest applies, the previous default sampler stays (the built-in
        one on a new replica), the error is logged and GET /v1/model reports it as `config_error` until an update
        without one. A new version whose replicas all fail to start stalls the application, so only what a
        replica cannot run with at all stops it."""
        try:
            new = SamplerUserConfig.from_user_config(config)
        except ConfigError as exc:
            if not self._configured:
                raise
            self._refuse(f"user_config update refused, the previous settings stay: {exc}")
            return
        problem = self._defaults_problem(new)
        if problem is not None:
            # The previous default sampler, at the previous guidance where the new one is not runnable with it
            # (dpmsolver-v3 needs statistics per guidance), else the built-in defaults.
            keep = dataclasses.replace(new, default_sampler=self.config.default_sampler)
            for fallback in (
                keep,
                dataclasses.replace(keep, default_guidance=self.config.default_guidance),
                dataclasses.replace(
                    new,
                    default_sampler=SamplerUserConfig().default_sampler,
                    default_guidance=SamplerUserConfig().default_guidance,
                ),
            ):
                if self._defaults_problem(fallback) is None:
                    new = fallback
                    break
        self.config, self._configured = new, True
        self._apply_batching()
        if problem is not None:
            self._refuse(
                f"{problem}; the default sampler stays {new.default_sampler!r} at guidance {new.default_guidance:g}"
            )
        else:
            self.config_error = None

    def _refuse(self, message: str) -> None:
        self.config_error = message
        logger.error("%s", message)

    def _defaults_problem(self, cfg: SamplerUserConfig) -> str | None:
        from pipelines.generation import GenerationError

        try:
            self.pipe.check_sampler(cfg.default_sampler, cfg.default_guidance)
        except GenerationError as exc:
            return (
                f"default_sampler: {cfg.default_sampler!r} (at default_guidance {cfg.default_guidance:g}) cannot run "
                f"on {self.pipe.checkpoint_uri}: {exc}"
            )
        return None

    def _apply_batching(self) -> None:
        self._batched.set_max_batch_size(self.config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    async def info(self) -> dict:
        """Model description for GET /v1/model, with the current defaults."""
        c = self.config
        return {
            **model_info(self.pipe, self.registry),
            "config_error": self.config_error,
            "defaults": {
                "steps": c.default_steps,
                "sampler": c.default_sampler,
                "guidance": c.default_guidance,
                "max_batch_size": c.max_batch_size,
                "max_batch_images": c.max_batch_images,
                "batch_wait_timeout_s": c.batch_wait_timeout_s,
            },
        }

    def check(self, req: dict) -> dict | None:
        """{"field", "message"} when the request does not fit this model (prompt vs label, range, length, sampler,
        seeds)."""
        error = self.check_conditions(req) or self.check_steer(req.get("steer")) or self.check_sampler(req)
        if error is None and req.get("seed") is not None:
            last = int(req["seed"]) + int(req.get("num_images") or 1) - 1
            if last > MAX_SEED:
                error = {
                    "field": "seed",
                    "message": f"seed: {req['seed']} + num_images - 1 = {last} is past the largest seed {MAX_SEED}",
                }
        return error

    def check_sampler(self, req: dict) -> dict | None:
        """{"field", "message"} when this checkpoint cannot run the requested (or default) sampler."""
        from pipelines.generation import GenerationError

        c = self.config
        sampler = req.get("sampler") or c.default_sampler
        guidance = float(req["guidance"] if req.get("guidance") is not None else c.default_guidance)
        try:
            self.pipe.check_sampler(sampler, guidance)
        except GenerationError as exc:
            default = "" if req.get("sampler") else " (the deployment's default_sampler)"
            return {"field": "sampler", "message": f"sampler: {sampler!r}{default}: {exc}"}
        return None

    def check_conditions(self, req: dict) -> dict | None:
        """{"field", "message"} when the prompt or label does not fit this model."""
        from pipelines.generation import GenerationError
        from pipelines.validation import BLANK_PROMPT, is_blank_prompt

        text = self.pipe.conditioning == "text"
        if text and req.get("label") is not None:
            return {"field": "label", "message": "label: this model is text-conditioned; send 'prompt' instead"}
        if text and req.get("prompt") is None:
            return {"field": "prompt", "message": "prompt: required for this text-conditioned model"}
        if text and is_blank_prompt(req["prompt"]):
            return {"field": "prompt", "message": f"prompt: empty; {BLANK_PROMPT}"}
        if not text:
            for key in ("prompt", "negative_prompt"):
                if req.get(key):
                    return {"field": key, "message": f"{key}: this model is class-conditioned; send 'label' instead"}
            label = req.get("label")
            if label is None or not 0 <= int(label) < int(self.pipe.num_classes):
                return {
                    "field": "label",
                    "message": f"label: {'required' if label is None else label} - this "
                    f"class-conditioned model takes a label in [0, {self.pipe.num_classes})",
                }
            return None
        guidance = float(req["guidance"] if req.get("guidance") is not None else self.config.default_guidance)
        unguided = guidance == 1.0 or self.pipe.distilled  # a negative prompt is dropped there (generate), not read
        for key in ("prompt", "negative_prompt"):
            if req.get(key) and not (key == "negative_prompt" and unguided):
                try:
                    self.pipe.encode_prompt(req[key])  # cached: the batch reuses the embedding
                except GenerationError as exc:
                    return {"field": key, "message": f"{key}: {str(exc).split(': ', 1)[-1]}"}
        return None

    def check_steer(self, steer: dict | None) -> dict | None:
        """{"field", "message"} when `steer` names an unknown concept or layer, or alpha is out of range."""
        from pipelines.generation import GenerationError

        if not steer:
            return None
        try:
            self.pipe._steering(steer)  # validates against the stored concepts; registers nothing
        except GenerationError as exc:
            msg = str(exc)
            field = msg.split(":", 1)[0] if msg.startswith("steer.") else "steer"
            return {"field": field, "message": msg}
        return None

    async def generate(self, req: dict) -> dict:
        """Validated request dict -> {"images": [png], "settings": {...}} | {"error": {...}} | {"internal_error"}."""
        try:
            error = self.check(req)
        except Exception:  # e.g. unreadable model statistics: a 500 with the request id, the replica keeps serving
            logger.exception("generation failed for request(s) %s", [req.get("request_id")])
            return {"internal_error": req.get("request_id")}
        if error is not None:
            return {"error": error}
        c = self.config
        seed = req.get("seed")
        n = int(req.get("num_images") or 1)
        seed = secrets.randbelow(MAX_SEED + 2 - n) if seed is None else int(seed)  # every seed + i stays <= MAX_SEED
        guidance = float(req["guidance"] if req.get("guidance") is not None else c.default_guidance)
        # Unguided sampling (guidance 1, or a guidance-distilled model) has no unconditional half for a negative
        # prompt to replace: it is dropped, and the settings echo null rather than claim it was used.
        guided = guidance != 1.0 and not self.pipe.distilled
        job = SampleJob(
            steps=int(req.get("steps") or c.default_steps),
            sampler=req.get("sampler") or c.default_sampler,
            guidance=guidance,
            seeds=[seed + i for i in range(n)],
            request_id=str(req.get("request_id") or ""),
            label=req.get("label"),
            prompt=req.get("prompt"),
            negative_prompt=(req.get("negative_prompt") or None) if guided else None,
            steer=tuple(req["steer"].get(k) for k in ("concept", "alpha", "layer")) if req.get("steer") else None,
        )
        result = await self._batched(job)
        if "internal_error" in result:
            return result
        settings = {
            "steps": job.steps,
            "sampler": job.sampler,
            "guidance": job.guidance,
            "seed": job.seeds[0],
            "seeds": job.seeds,
            "num_images": job.num_images,
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "label": job.label,
            "height": self.pipe.image_size,
            "width": self.pipe.image_size,
            "batch_images": result["batch_images"],
            "checkpoint": self.pipe.checkpoint_uri,
            "steer": req.get("steer") or None,
        }
        return {"images": result["images"], "settings": settings}

    def run_group(self, jobs: list[SampleJob]) -> list[list[bytes]]:
        """Sampler calls of at most `max_batch_images` images for a group of compatible jobs; PNGs per job."""
        from pipelines.generation import SamplerSettings

        steps, sampler, guidance = jobs[0].batch_key()[:3]
        steer = dict(zip(("concept", "alpha", "layer"), jobs[0].steer)) if jobs[0].steer else None
        settings = SamplerSettings(sampler=sampler, steps=steps, guidance=guidance, steer=steer)
        seeds = [s for j in jobs for s in j.seeds]
        per_call = self.config.max_batch_images
        if self.pipe.conditioning == "class":
            images = self.pipe.generate_labels([j.label for j in jobs for _ in j.seeds], seeds, settings, per_call)
        else:
            images = self.pipe.generate_prompts(
                [j.prompt for j in jobs for _ in j.seeds],
                seeds,
                settings,
                [j.negative_prompt for j in jobs for _ in j.seeds],
                per_call,
            )
        out, i = [], 0
        for j in jobs:
            out.append([png_bytes(images[k]) for k in range(i, i + j.num_images)])
            i += j.num_images
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, jobs: list[SampleJob]) -> list[dict]:
        """Run a Serve batch: one sampler call per group of compatible jobs, off the event loop."""
        results: list[dict | None] = [None] * len(jobs)
        for group in group_compatible(jobs, self.config.max_batch_images):
            members = [jobs[i] for i in group]
            try:
                # A worker thread keeps the replica's event loop free, so the next batch fills while this one runs.
                pngs = await asyncio.to_thread(self.run_group, members)
            except Exception:  # one failing group must not fail the other groups of the batch
                ids = [j.request_id for j in members]
                logger.exception("generation failed for request(s) %s", ids)
                for i in group:
                    results[i] = {"internal_error": jobs[i].request_id}
                continue
            total = min(sum(j.num_images for j in members), self.config.max_batch_images)
            for i, p in zip(group, pngs):
                results[i] = {"images": p, "batch_images": total}
        return results  # type: ignore[return-value]

    def check_health(self) -> None:
        """Serve health check: the replica is unhealthy if its model is gone."""
        if getattr(self, "pipe", None) is None:
            raise RuntimeError("model not loaded")
