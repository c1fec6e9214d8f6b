"""The HTTP front of the sampler service: a FastAPI app on the Ingress deployment.

Validation (strict pydantic schema, 4xx naming the field), bearer auth, a body-size limit, PNG / JSON responses,
503 at once when the sampler's bounded queue is full. Every response carries an `X-Request-Id`; a 500 says only
that id (the sampler replica logs the exception under it), never exception text.
"""
# No `from __future__ import annotations`: FastAPI must see real types on the ingress methods (Serve rewraps them).

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from ditcore.config import ConfigError, from_dict
from serve.auth import DEFAULT_TOKEN_ENV, AuthError, BearerAuth
from serve.schema import (
    DEFAULT_MAX_BODY_BYTES,
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

INGRESS_NAME = "Ingress"


@dataclass
class IngressSettings:
    """Run-time settings of the ingress deployment (Serve `user_config`)."""

    auth_token_env: str | None = DEFAULT_TOKEN_ENV  # env var holding the bearer token; set = bearer auth on
    auth_required: bool = False  # no token in that env var: the replica fails to start instead of running open
    auth_disabled: bool = False  # explicitly serve without auth (ignores the token; refused nowhere)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes: {self.max_body_bytes} must be >= 1 (every request would get 413)")


# Per-process state read by the middlewares; each ingress replica sets it in reconfigure, through `set_gates`.
_BODY_LIMIT = {"max_body_bytes": DEFAULT_MAX_BODY_BYTES}
_AUTH = {"auth": BearerAuth(None)}


def set_gates(auth: BearerAuth, max_body_bytes: int) -> None:
    """Set what the middlewares enforce in this process.

    Serve ships the Ingress class to its replica by value, with copies of the module globals its methods name; the
    middlewares are imported there by reference and read this module's own dicts. A module-level function is also
    pickled by reference, so calling it from `reconfigure` updates the dicts the middlewares read.
    """
    _AUTH["auth"] = auth
    _BODY_LIMIT["max_body_bytes"] = int(max_body_bytes)


# Routes that need the bearer token when auth is on; /healthz and the API docs stay open.
PROTECTED_PATHS = ("/v1/generate", "/v1/model")


def _error(
    status: int,
    error: str,
    detail: list[FieldError] | None = None,
    headers: dict | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=error, detail=detail or [], request_id=request_id).model_dump(exclude_none=True)
    return JSONResponse(status_code=status, content=body, headers=headers)


def _unauthorized(exc: AuthError) -> JSONResponse:
    return _error(
        401,
        str(exc),
        [FieldError(field="Authorization", message=f"Authorization: {exc}")],
        headers={"WWW-Authenticate": "Bearer"},
    )


class BearerGate:
    """ASGI middleware: 401 for a protected route without the right bearer token, before its body is read.

    Checking here rather than in the route means an unauthenticated client learns nothing about the request schema:
    a malformed or oversized body without a token is a 401, not a 422 or 413.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        auth: BearerAuth = _AUTH["auth"]
        if scope["type"] == "http" and auth.enabled and scope.get("path", "").rstrip("/").endswith(PROTECTED_PATHS):
            headers = scope.get("headers", [])
            value = next((v.decode("latin-1") for k, v in headers if k.lower() == b"authorization"), "")
            scheme, _, credentials = value.strip().partition(" ")
            try:
                # latin-1 maps bytes 1:1, so this is the header's bytes again: a UTF-8 token compares as sent.
                auth.check(scheme, credentials.strip().encode("latin-1") or None)
            except AuthError as exc:
                await _unauthorized(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
        too_big = _error(
            413,
            "request body too large",
            [FieldError(field="body", message=f"body: larger than the limit of {limit} bytes")],
        )
        length = headers.get("content-length")
        if length is not None:
            if not (length.strip().isascii() and length.strip().isdigit()):  # "²" is a digit to str.isdigit
                await _error(
                    400,
                    "invalid Content-Length",
                    [FieldError(field="Content-Length", message=f"Content-Length: not an integer, got {length!r}")],
                )(scope, receive, send)
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
api.add_middleware(BearerGate)  # added last = runs first: no body is read for a request without the token
# Documents the bearer scheme in the OpenAPI schema; BearerGate enforces it.
bearer = HTTPBearer(auto_error=False, description="Required when the deployment's API token env var is set.")


@api.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, "invalid request", validation_errors(list(exc.errors()), request.headers.get("content-type")))


@api.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
        # FastAPI's "There was an error parsing the body": bytes that are not UTF-8, a number too long to convert,
        # or JSON nested deeper than the parser recurses.
        why = "nested too deeply" if isinstance(exc.__cause__, RecursionError) else str(exc.__cause__).split(";")[0]
        message = f"body: could not be read as JSON ({why})"
        return _error(422, "invalid request", [FieldError(field="body", message=message)])
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
        """Apply user_config: auth token env var, auth_required / auth_disabled, max_body_bytes."""
        settings = from_dict(IngressSettings, dict(config or {}), where="user_config")
        if settings.auth_disabled:
            self.auth = BearerAuth(None)
        else:
            self.auth = BearerAuth.from_env(settings.auth_token_env, required=settings.auth_required)
        set_gates(self.auth, settings.max_body_bytes)
        self.settings = settings

    @api.get("/healthz", response_model=Health, summary="Liveness (never needs auth)")
    async def healthz(self) -> Health:
        """Liveness of the HTTP front; open even when auth is on."""
        return Health()

    @api.get(
        "/v1/model",
        response_model=ModelInfo,
        responses={k: _ERRORS[k] for k in (401, 503)},
        summary="The served checkpoint: config, parameters, FLOPs, FID, training compute",
    )
    async def model_info(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Any:
        """Describe the served model (BearerGate has checked the token)."""
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
                "description": "One PNG (format=png, num_images=1; settings in X-Ditscale-* headers) or "
                "JSON with base64 PNGs.",
                "content": {
                    "image/png": {},
                    "application/json": {"schema": {"$ref": "#/components/schemas/GenerateResponse"}},
                },
            },
            **_ERRORS,
        },
        response_model=GenerateResponse,
    )
    async def generate(
        self,
        body: GenerateRequest,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Any:
        """Sample images for a prompt or class label; the response states the seeds and settings used (BearerGate has
        checked the token)."""
        # Serve's proxy names every request (x-request-id, echoed on the response): use its id so the header and a
        # 500's body agree; only without the proxy does the response need the header from here.
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        own = {} if request.headers.get("x-request-id") else {"X-Request-Id": request_id}
        try:
            result = await self.sampler.generate.remote({**body.model_dump(), "request_id": request_id})
        except BackPressureError:
            # Bounded queue is full: fail fast so clients back off instead of memory growing without bound.
            return _error(503, "overloaded: sampler queue is full, retry later", headers={"Retry-After": "1"})
        except (DeploymentUnavailableError, RayServeException, RayActorError, ActorUnavailableError) as exc:
            # No replica, or the one serving this request died mid-way: transient while Serve replaces it.
            return _error(503, f"sampler unavailable: {type(exc).__name__}", headers={"Retry-After": "1"})
        if "error" in result:
            return _error(422, "invalid request", [FieldError(**result["error"])])
        if "internal_error" in result:
            # The sampler logged the exception under this id; its text stays server-side.
            return _error(
                500,
                "internal error: generation failed; quote the request id when reporting it",
                headers=own,
                request_id=request_id,
            )
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
            headers.update(own)
            return Response(content=pngs[0], media_type="image/png", headers=headers)
        response = GenerateResponse(
            images=[
                GeneratedImage(seed=seed, png_base64=base64.b64encode(p).decode("ascii"))
                for seed, p in zip(settings.seeds, pngs)
            ],
            seeds=settings.seeds,
            settings=settings,
        )
        return JSONResponse(response.model_dump(mode="json"), headers=own)
