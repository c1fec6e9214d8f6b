"""Ray Serve application of the sampler service: a FastAPI ingress and a batched sampler deployment.

    Ingress  (FastAPI, CPU)   validation, auth, body-size limit, PNG/JSON responses, 503 on overload
      |  DeploymentHandle
    Sampler  (GPU when given) checkpoint + VAE decoder + text encoder; @serve.batch dynamic batching

Deploy with `serve run serve/config.yaml`, `serve deploy serve/config.yaml` or `ditscale serve`;
the import path is `serve.app:build_app` and the application arguments are `AppArgs`
(`make_app(args, deployments)` also applies per-deployment options, for `ditscale serve`).
Weights load only through safetensors (ditcore.checkpoint; local VAE and text-encoder directories
must hold *.safetensors); no request field is ever used as a path.
"""
# No `from __future__ import annotations`: FastAPI must see real types on the ingress methods (Serve rewraps them).

import asyncio
import base64
import inspect
import io
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from ditcore.config import ConfigError, from_dict, to_dict
from serve.auth import DEFAULT_TOKEN_ENV, AuthError, BearerAuth
from serve.batching import SampleJob, SamplerSettings, group_compatible
from serve.schema import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_SEED,
    ErrorResponse,
    FieldError,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    Health,
    ModelInfo,
    Settings,
    validation_errors,
)

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "Ingress"
SAMPLER_NAME = "Sampler"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class AppArgs:
    """Application arguments (`args:` in serve/config.yaml): which checkpoint to serve and where."""

    checkpoint: str | None = None  # local directory or s3:// URI of a checkpoint directory
    champion: bool = False  # serve the MLflow registered model version with alias "champion"
    model_name: str = "ditscale"  # registered model name used with champion
    tracking_uri: str | None = None  # MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)
    device: str | None = None  # "cuda" / "cpu"; default: cuda when the replica sees a GPU
    use_ema: bool = True

    def __post_init__(self) -> None:
        if bool(self.checkpoint) == bool(self.champion):
            raise ConfigError("args: give exactly one of 'checkpoint' (path or s3:// URI) or 'champion: true'")


@dataclass
class IngressSettings:
    """Run-time settings of the ingress deployment (Serve `user_config`)."""

    auth_token_env: str | None = DEFAULT_TOKEN_ENV  # env var holding the bearer token; unset/empty = auth off
    auth_required: bool = False  # fail the deployment instead of running open when the token is missing
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class RequestError(ValueError):
    """A request is valid JSON but does not fit the served model; names the field."""

    def __init__(self, field_: str, message: str) -> None:
        super().__init__(f"{field_}: {message}")
        self.field = field_
        self.message = f"{field_}: {message}"


# ---------------------------------------------------------------------------------------------
# Model loading and batched generation (Ray-free; used by the Sampler deployment)
# ---------------------------------------------------------------------------------------------


def resolve_checkpoint(args: AppArgs) -> tuple[str, dict | None]:
    """(checkpoint URI, registry record or None) for a path/URI or the MLflow 'champion' alias."""
    if not args.champion:
        return str(args.checkpoint), None
    from pipelines.infra.tracking import resolve_champion

    record = dict(resolve_champion(model_name=args.model_name, tracking_uri=args.tracking_uri))
    if not record.get("checkpoint"):
        raise RuntimeError(f"registered model {args.model_name!r}@champion has no checkpoint URI: {record}")
    return str(record["checkpoint"]), record


def _local(uri: str) -> str:
    """A local path for a local path or s3:// URI (downloaded once into a temp dir)."""
    from pipelines.infra.storage import local_copy

    return local_copy(uri)


def _require_safetensors(path: str, subfolder: str | None = None) -> None:
    """Refuse a local model directory whose weights are not safetensors (pickle never loads on the serving path)."""
    from pathlib import Path

    folder = Path(path).expanduser() / (subfolder or "")
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        raise RuntimeError(f"{folder}: no *.safetensors weights; the sampler service loads weights only through safetensors")


def _dataset_uri(manifest_uri: str) -> str:
    """Dataset directory from a manifest URI (either the directory or its manifest.json)."""
    m = str(manifest_uri).rstrip("/")
    return m.rsplit("/", 1)[0] if m.endswith(".json") else m


def _first_number(*sources: tuple[dict | None, tuple[str, ...]]) -> float | None:
    """First value among (mapping, keys) pairs that parses as a float."""
    for mapping, keys in sources:
        for key in keys:
            value = (mapping or {}).get(key)
            if value is None:
                continue
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
    return None


def _png(image: np.ndarray) -> bytes:
    """uint8 [H,W,3] -> PNG bytes (deterministic encoder settings)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class GenerationEngine:
    """A loaded checkpoint plus its decoder and text encoder; turns groups of SampleJobs into PNGs."""

    def __init__(self, args: AppArgs) -> None:
        import torch

        from ditcore.checkpoint import load_checkpoint
        from ditcore.flops import flops_summary
        from ditcore.processes import build_process
        from ditcore.samplers import model_fn_from_model

        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.checkpoint_uri, self.registry = resolve_checkpoint(args)
        local_dir = _local(self.checkpoint_uri)
        ckpt = load_checkpoint(local_dir, use_ema=args.use_ema, device=str(self.device))
        self.model = ckpt.model.to(self.device).eval()
        self.config: dict = ckpt.config
        self.state: dict = ckpt.state or {}
        self.model_fn = model_fn_from_model(self.model)
        objective = self.config.get("objective") or {}
        self.process = build_process(objective.get("process", "flow"))
        self.prediction = objective.get("prediction", "velocity")
        model_cfg = self.model.config
        self.latent_size = int(model_cfg.input_size)
        self.in_channels = int(self.model.in_channels)
        self.conditioning = "text" if "text_emb" in tuple(self.model.cond_keys) else "class"
        self.num_classes = int(model_cfg.num_classes) if self.conditioning == "class" else None

        # Encoders named by the training data manifest: VAE decoder, text encoder, null text embedding.
        self.manifest: dict = {}
        manifest_uri = (self.config.get("data") or {}).get("manifest")
        if manifest_uri:
            from pipelines.latents.reader import read_manifest

            self.manifest = read_manifest(_dataset_uri(manifest_uri)) or {}
        self.vae = None
        vae_spec = self.manifest.get("vae") or {}
        if vae_spec.get("path"):
            from pipelines.encoders.vae import load_vae

            vae_path = str(vae_spec["path"])
            vae_path = _local(vae_path) if vae_path.startswith("s3://") else vae_path
            _require_safetensors(vae_path, vae_spec.get("subfolder"))
            self.vae = load_vae(vae_path, device=str(self.device), revision=vae_spec.get("revision"),
                                subfolder=vae_spec.get("subfolder"))
            self.scaling_factor = float(vae_spec.get("scaling_factor", 1.0))
            self.shift_factor = float(vae_spec.get("shift_factor", 0.0) or 0.0)
            self.image_size = int(self.manifest.get("image_size") or self.latent_size * int(vae_spec.get("downsample", 8)))
        elif self.in_channels == 3:
            self.image_size = self.latent_size  # pixel-space model: x0 is the image in [-1, 1]
        else:
            raise RuntimeError(
                f"{self.checkpoint_uri}: model has {self.in_channels} input channels but its data manifest "
                f"({manifest_uri or 'none in config.json data.manifest'}) names no VAE to decode latents"
            )
        self.text_encoder = None
        self.null_text: dict | None = None
        if self.conditioning == "text":
            text_spec = self.manifest.get("text") or {}
            if not text_spec:
                raise RuntimeError(f"{self.checkpoint_uri}: text-conditioned model but the data manifest has no 'text' entry")
            from pipelines.latents.reader import load_null_text
            from pipelines.encoders.text import load_text_encoder

            encoder = str(text_spec.get("encoder") or "minilm")
            encoder = _local(encoder) if encoder.startswith("s3://") else encoder
            if encoder != "minilm":  # the bundled MiniLM ships model.safetensors
                _require_safetensors(encoder, text_spec.get("subfolder"))
            spec = {"encoder": encoder, "max_length": text_spec.get("max_length")}
            for key in ("subfolder", "tokenizer_subfolder", "revision"):
                if text_spec.get(key):
                    spec[key] = text_spec[key]
            # Default (auto) dtype, as in precompute, so prompts embed the way the training captions did.
            self.text_encoder = load_text_encoder(spec, device=self.device)
            self.null_text = load_null_text(_dataset_uri(manifest_uri))
            self._text_cache: dict[str, dict] = {}
        text_tokens = int((self.manifest.get("text") or {}).get("max_length") or getattr(model_cfg, "max_text_len", 0) or 0) or None
        try:
            self.flops = dict(flops_summary(model_cfg, text_tokens=text_tokens) if text_tokens else flops_summary(model_cfg))
        except Exception as exc:  # FLOPs are informative only; never block serving on them
            logger.warning("flops_summary failed: %s", exc)
            self.flops = {}
        self.params = int(self.flops["params"]) if "params" in self.flops else sum(p.numel() for p in self.model.parameters())

    # ---- info --------------------------------------------------------------------------------

    def info(self) -> dict:
        """Content of GET /v1/model (without the run-time defaults)."""
        reg = self.registry or {}
        reg_tags = reg.get("tags") if isinstance(reg.get("tags"), dict) else {}
        return {
            "checkpoint": self.checkpoint_uri,
            "conditioning": self.conditioning,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "config": self.config,
            "params": self.params,
            "flops": self.flops or None,
            "fid": _first_number((reg, ("fid",)), (reg_tags, ("fid",)), (self.state, ("fid", "best_fid"))),
            "train_flops": _first_number(
                (reg, ("train_flops",)), (reg_tags, ("train_flops",)),
                (self.state, ("train_flops", "flops", "flops_consumed", "flops_seen")),
            ),
            "state": self.state,
            "registry": _jsonable(self.registry) if self.registry is not None else None,
        }

    # ---- request checks ----------------------------------------------------------------------

    def check(self, req: dict) -> None:
        """Raise RequestError when the request does not fit this model (prompt vs label, label range)."""
        if self.conditioning == "text":
            if req.get("label") is not None:
                raise RequestError("label", "this model is text-conditioned; send 'prompt' instead")
            if req.get("prompt") is None:
                raise RequestError("prompt", "required for this text-conditioned model")
        else:
            if req.get("prompt") is not None:
                raise RequestError("prompt", "this model is class-conditioned; send 'label' instead")
            if req.get("negative_prompt"):
                raise RequestError("negative_prompt", "this model is class-conditioned; negative prompts need a text model")
            label = req.get("label")
            if label is None:
                raise RequestError("label", f"required for this class-conditioned model (0..{self.num_classes - 1})")
            if not 0 <= int(label) < int(self.num_classes):
                raise RequestError("label", f"{label} is out of range [0, {self.num_classes})")

    # ---- generation --------------------------------------------------------------------------

    def _encode(self, prompt: str) -> dict:
        """Text embedding of one prompt (encoded alone, so it never depends on batch padding)."""
        import torch

        hit = self._text_cache.get(prompt)
        if hit is None:
            with torch.inference_mode():
                out = self.text_encoder.encode([prompt])
            hit = {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v)[0].cpu() for k, v in out.items()}
            if len(self._text_cache) > 1024:  # bounded: prompts are user input
                self._text_cache.clear()
            self._text_cache[prompt] = hit
        return hit

    def _null_text(self) -> dict:
        import torch

        if self.null_text is None:
            return self._encode("")
        return {k: torch.as_tensor(v) for k, v in self.null_text.items()}

    def _conditions(self, jobs: list[SampleJob]) -> tuple[dict, dict]:
        """Per-image cond / uncond dicts (batched tensors on the model device)."""
        import torch

        if self.conditioning == "class":
            labels = [j.label for j in jobs for _ in j.seeds]
            y = torch.tensor(labels, dtype=torch.long, device=self.device)
            return {"y": y}, {"y": torch.full_like(y, int(self.num_classes))}
        conds, unconds = [], []
        null = self._null_text()
        for j in jobs:
            c = self._encode(j.prompt or "")
            u = self._encode(j.negative_prompt) if j.negative_prompt else null
            conds += [c] * j.num_images
            unconds += [u] * j.num_images

        def stack(items: list[dict]) -> dict:
            keys = [k for k in ("text_emb", "text_mask", "text_pooled") if k in items[0]]
            out = {}
            for k in keys:
                t = torch.stack([it[k] for it in items]).to(self.device)
                out[k] = t.bool() if k == "text_mask" else t.float()
            return out

        return _align_text(stack(conds)), _align_text(stack(unconds))

    def run(self, jobs: list[SampleJob]) -> list[list[np.ndarray]]:
        """Generate every job of one compatible group in a single sampler call; images per job."""
        import torch

        from ditcore.samplers import sample

        steps, sampler, guidance = jobs[0].batch_key()
        seeds = [s for j in jobs for s in j.seeds]
        # One generator per image: the noise and the sampler's stochasticity of an image depend only on its seed.
        generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        shape = (self.in_channels, self.latent_size, self.latent_size)
        with torch.inference_mode():
            noise = torch.stack([torch.randn(shape, generator=g, device=self.device) for g in generators])
            cond, uncond = self._conditions(jobs)
            x0 = sample(
                self.model_fn, noise, process=self.process, prediction=self.prediction, sampler=sampler,
                steps=steps, cond=cond, uncond=uncond if guidance != 1.0 else None, guidance=guidance,
                generators=generators,
            )
            images = self._decode(x0)
        out, i = [], 0
        for j in jobs:
            out.append([images[k] for k in range(i, i + j.num_images)])
            i += j.num_images
        return out

    def _decode(self, x0: Any) -> np.ndarray:
        """Model-space samples -> uint8 [B,H,W,3]."""
        import torch

        if self.vae is not None:
            from pipelines.encoders.vae import decode_to_images

            return np.asarray(decode_to_images(self.vae, x0, self.scaling_factor, self.shift_factor))
        img = ((x0.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)  # [B,3,H,W] pixel space in [-1, 1]
        return img.permute(0, 2, 3, 1).cpu().numpy()  # [B,H,W,3]


def _align_text(cond: dict) -> dict:
    """Check the stacked text condition is consistent: text_emb [B,L,D], text_mask [B,L], text_pooled [B,Dp]."""
    emb, mask = cond.get("text_emb"), cond.get("text_mask")
    if emb is not None and mask is not None and emb.shape[:2] != mask.shape[:2]:
        raise RuntimeError(f"text_emb {tuple(emb.shape)} and text_mask {tuple(mask.shape)} disagree")
    return cond


def _jsonable(obj: Any) -> Any:
    """Best-effort JSON-safe copy (registry records may carry non-JSON values)."""
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return str(obj)


# ---------------------------------------------------------------------------------------------
# Sampler deployment
# ---------------------------------------------------------------------------------------------


@serve.deployment(
    name=SAMPLER_NAME,
    max_ongoing_requests=32,
    max_queued_requests=64,
    ray_actor_options={"num_cpus": 1},
)
class Sampler:
    """Holds the model; groups concurrent requests into batched sampler calls with @serve.batch."""

    def __init__(self, args: dict) -> None:
        self.args = from_dict(AppArgs, args, where="args")
        t0 = time.monotonic()
        self.engine = GenerationEngine(self.args)
        self.settings = SamplerSettings()
        self._apply_batching()
        logger.info("Sampler loaded %s (%s) in %.1fs on %s", self.engine.checkpoint_uri,
                    self.engine.conditioning, time.monotonic() - t0, self.engine.device)

    def reconfigure(self, config: dict) -> None:
        """Apply user_config: default steps/sampler/guidance and batch size/wait, without reloading."""
        self.settings = SamplerSettings.from_user_config(config)
        self._apply_batching()

    def _apply_batching(self) -> None:
        self._batched.set_max_batch_size(self.settings.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    async def info(self) -> dict:
        """Model description for GET /v1/model, with the current defaults."""
        info = self.engine.info()
        s = self.settings
        info["defaults"] = {"steps": s.default_steps, "sampler": s.default_sampler, "guidance": s.default_guidance,
                            "max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s}
        return info

    async def generate(self, req: dict) -> dict:
        """Validated request dict -> {"images": [png bytes], "settings": {...}} or {"error": FieldError dict}."""
        try:
            self.engine.check(req)
        except RequestError as exc:
            return {"error": {"field": exc.field, "message": exc.message}}
        s = self.settings
        n = int(req.get("num_images") or 1)
        seed = req.get("seed")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        job = SampleJob(
            steps=int(req.get("steps") or s.default_steps),
            sampler=req.get("sampler") or s.default_sampler,
            guidance=float(req["guidance"] if req.get("guidance") is not None else s.default_guidance),
            seeds=[int(seed) + i for i in range(n)],
            label=req.get("label"),
            prompt=req.get("prompt"),
            negative_prompt=req.get("negative_prompt") or None,
        )
        result = await self._batched(job)
        if "internal_error" in result:
            return result
        settings = {
            "steps": job.steps, "sampler": job.sampler, "guidance": job.guidance, "seed": job.seeds[0],
            "seeds": job.seeds, "num_images": n, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
            "label": job.label, "height": self.engine.image_size, "width": self.engine.image_size,
            "batch_images": result["batch_images"], "checkpoint": self.engine.checkpoint_uri,
        }
        return {"images": result["images"], "settings": settings}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, jobs: list[SampleJob]) -> list[dict]:
        """Run a Serve batch: one sampler call per group of compatible jobs, off the event loop."""
        results: list[dict | None] = [None] * len(jobs)
        for group in group_compatible(jobs):
            members = [jobs[i] for i in group]
            try:
                # A worker thread keeps the replica's event loop free, so the next batch fills while this one runs.
                images = await asyncio.to_thread(self.engine.run, members)
                pngs = await asyncio.to_thread(lambda: [[_png(im) for im in per_job] for per_job in images])
            except Exception as exc:  # one failing group must not fail the other groups of the batch
                logger.exception("generation failed")
                for i in group:
                    results[i] = {"internal_error": f"{type(exc).__name__}: {exc}"}
                continue
            total = sum(j.num_images for j in members)
            for i, p in zip(group, pngs):
                results[i] = {"images": p, "batch_images": total}
        return results  # type: ignore[return-value]

    def check_health(self) -> None:
        """Serve health check: the replica is unhealthy if its model is gone."""
        if getattr(self, "engine", None) is None:
            raise RuntimeError("model not loaded")


# ---------------------------------------------------------------------------------------------
# HTTP ingress
# ---------------------------------------------------------------------------------------------

# Per-process limit read by the body-size middleware; each ingress replica sets it in reconfigure.
_BODY_LIMIT = {"max_body_bytes": DEFAULT_MAX_BODY_BYTES}


def _error(status: int, error: str, detail: list[FieldError] | None = None, headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(error=error, detail=detail or []).model_dump()
    return JSONResponse(status_code=status, content=body, headers=headers)


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length or by counting streamed bytes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = int(_BODY_LIMIT["max_body_bytes"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        too_big = _error(413, "request body too large",
                         [FieldError(field="body", message=f"body: larger than the limit of {limit} bytes")])
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _error(400, "invalid Content-Length", [FieldError(field="Content-Length", message="Content-Length: not an integer")])(scope, receive, send)
                return
            if int(length) > limit:
                await too_big(scope, receive, send)
                return
        # Read the (possibly chunked) body up to the limit, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


api = FastAPI(
    title="ditscale sampler",
    version="1.0",
    description="Diffusion Transformer sampler service (Ray Serve): POST /v1/generate, GET /v1/model, GET /healthz.",
)
api.add_middleware(BodySizeLimit)
bearer = HTTPBearer(auto_error=False, description="Required when the deployment's API token env var is set.")


@api.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, "invalid request", validation_errors(list(exc.errors())))


@api.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
    413: {"model": ErrorResponse, "description": "Request body too large."},
    422: {"model": ErrorResponse, "description": "Invalid request; `detail` names each bad field."},
    503: {"model": ErrorResponse, "description": "Overloaded or the model replica is restarting; retry later."},
}


@serve.deployment(
    name=INGRESS_NAME,
    max_ongoing_requests=128,
    max_queued_requests=256,
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress(api)
class Ingress:
    """HTTP front: validates and authenticates requests, forwards them to the Sampler deployment."""

    def __init__(self, sampler: DeploymentHandle) -> None:
        self.sampler = sampler
        self.reconfigure({})

    def reconfigure(self, config: dict) -> None:
        """Apply user_config: auth token env var, auth_required, max_body_bytes."""
        settings = from_dict(IngressSettings, dict(config or {}), where="user_config")
        self.auth = BearerAuth.from_env(settings.auth_token_env, required=settings.auth_required)
        _BODY_LIMIT["max_body_bytes"] = int(settings.max_body_bytes)
        self.settings = settings

    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> JSONResponse | None:
        try:
            self.auth.check(credentials.scheme if credentials else None, credentials.credentials if credentials else None)
        except AuthError as exc:
            return _error(401, str(exc), [FieldError(field="Authorization", message=f"Authorization: {exc}")],
                          headers={"WWW-Authenticate": "Bearer"})
        return None

    @api.get("/healthz", response_model=Health, summary="Liveness (never needs auth)")
    async def healthz(self) -> Health:
        """Liveness of the HTTP front; open even when auth is on."""
        return Health()

    @api.get("/v1/model", response_model=ModelInfo, responses={k: _ERRORS[k] for k in (401, 503)},
             summary="The served checkpoint: config, parameters, FLOPs, FID, training compute")
    async def model_info(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Any:
        """Describe the served model."""
        if (denied := self._authorize(credentials)) is not None:
            return denied
        try:
            info = await self.sampler.info.remote()
        except (RayServeException, RayActorError, ActorUnavailableError) as exc:
            return _error(503, f"sampler unavailable: {type(exc).__name__}", headers={"Retry-After": "1"})
        return JSONResponse(ModelInfo(**info).model_dump(mode="json"))

    @api.post(
        "/v1/generate",
        summary="Generate images",
        responses={
            200: {
                "description": "One PNG (format=png, num_images=1; settings in X-Ditscale-* headers) or JSON with base64 PNGs.",
                "content": {"image/png": {}, "application/json": {"schema": {"$ref": "#/components/schemas/GenerateResponse"}}},
            },
            **_ERRORS,
        },
        response_model=GenerateResponse,
    )
    async def generate(self, body: GenerateRequest, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Any:
        """Sample images for a prompt or class label; the response states the seeds and settings used."""
        if (denied := self._authorize(credentials)) is not None:
            return denied
        try:
            result = await self.sampler.generate.remote(body.model_dump())
        except BackPressureError:
            # Bounded queue is full: fail fast so clients back off instead of memory growing without bound.
            return _error(503, "overloaded: sampler queue is full, retry later", headers={"Retry-After": "1"})
        except (DeploymentUnavailableError, RayServeException, RayActorError, ActorUnavailableError) as exc:
            # No replica, or the one serving this request died mid-way: transient while Serve replaces it.
            return _error(503, f"sampler unavailable: {type(exc).__name__}", headers={"Retry-After": "1"})
        if "error" in result:
            return _error(422, "invalid request", [FieldError(**result["error"])])
        if "internal_error" in result:
            return _error(500, f"generation failed: {result['internal_error']}")
        settings = Settings(**result["settings"])
        pngs: list[bytes] = result["images"]
        if body.format == "png" and len(pngs) == 1:
            s = settings
            headers = {
                "X-Ditscale-Seed": str(s.seed),
                "X-Ditscale-Steps": str(s.steps),
                "X-Ditscale-Sampler": s.sampler,
                "X-Ditscale-Guidance": repr(s.guidance),
                "X-Ditscale-Batch-Images": str(s.batch_images),
                # Whole settings as ASCII JSON (prompt escaped) so clients can log exactly what ran.
                "X-Ditscale-Settings": json.dumps(s.model_dump(), ensure_ascii=True, separators=(",", ":")),
            }
            if s.label is not None:
                headers["X-Ditscale-Label"] = str(s.label)
            return Response(content=pngs[0], media_type="image/png", headers=headers)
        response = GenerateResponse(
            images=[GeneratedImage(seed=seed, png_base64=base64.b64encode(p).decode("ascii"))
                    for seed, p in zip(settings.seeds, pngs)],
            seeds=settings.seeds,
            settings=settings,
        )
        return JSONResponse(response.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------
# Application builders
# ---------------------------------------------------------------------------------------------

# Keys a config file's `deployments:` entry may set, i.e. the keyword options of Deployment.options().
_DEPLOYMENT_OPTION_KEYS = {
    p for p in inspect.signature(serve.Deployment.options).parameters if p not in ("self", "func_or_class", "version")
    and not p.startswith("_")
}


def build_app(args: dict) -> serve.Application:
    """Serve application builder (`import_path: serve.app:build_app`; `args` are the AppArgs keys)."""
    return make_app(args)


def make_app(args: dict | None = None, deployments: dict[str, dict] | None = None) -> serve.Application:
    """The application with `deployments` ("Ingress"/"Sampler" -> Deployment.options() overrides, the same
    keys as a config file's `deployments:` entries) applied; used by `ditscale serve`, tests and bench."""
    args = dict(args or {})
    for key in ("champion", "use_ema"):  # `serve run serve.app:build_app champion=true` passes strings
        if isinstance(args.get(key), str) and args[key].lower() in ("true", "false", "1", "0"):
            args[key] = args[key].lower() in ("true", "1")
    app_args = from_dict(AppArgs, args, where="args")  # fail here, in the driver, with the bad key named
    opts = {k: dict(v) for k, v in (deployments or {}).items()}
    unknown = sorted(set(opts) - {INGRESS_NAME, SAMPLER_NAME})
    if unknown:
        raise ConfigError(f"deployments: unknown deployment(s) {unknown}; expected {INGRESS_NAME!r}, {SAMPLER_NAME!r}")
    for name, o in opts.items():
        o.pop("name", None)
        bad = sorted(set(o) - _DEPLOYMENT_OPTION_KEYS)
        if bad:
            raise ConfigError(f"deployments.{name}: unknown option(s) {bad}")
        if "user_config" in o:
            # Validate here too so a typo fails `ditscale serve` before any replica starts.
            if name == SAMPLER_NAME:
                SamplerSettings.from_user_config(o["user_config"])
            else:
                from_dict(IngressSettings, o["user_config"] or {}, where="user_config")
    sampler = Sampler.options(**opts.get(SAMPLER_NAME, {})).bind(to_dict(app_args))
    return Ingress.options(**opts.get(INGRESS_NAME, {})).bind(sampler)
