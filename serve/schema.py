"""HTTP schema of the sampler service: request/response models with range validation.

The request model is strict on purpose: a string where a number belongs, a float step count, a bool
seed or an unknown field is a 422 that names the field, never a silent coercion. Limits that
depend on the loaded model (label < num_classes, prompt vs label) are checked by the sampler
deployment, which knows the model, and reported the same way (see `FieldError`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ditcore.samplers import SAMPLERS
from pipelines.generation import MAX_SEED

# Bounds of the public API. Wide enough for real use, tight enough that one request cannot
# monopolise a replica (steps x num_images bounds the work of a request).
MAX_STEPS = 250
MAX_GUIDANCE = 30.0
MAX_IMAGES = 16
MAX_PROMPT_CHARS = 1000
MAX_STEER_ALPHA = 20.0  # = ditcore.steering.MAX_ALPHA
DEFAULT_MAX_BODY_BYTES = 64 * 1024


class SteerRequest(BaseModel):
    """Concept steering: add alpha x the concept's direction to a block's hidden state (docs/steering.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    concept: str = Field(..., min_length=1, max_length=64, description="A concept of `ditscale concepts`.")
    alpha: float = Field(..., ge=-MAX_STEER_ALPHA, le=MAX_STEER_ALPHA, description="Strength (class-mean units).")
    layer: int | None = Field(None, ge=0, description="Block index; default: the block the directions came from.")


class GenerateRequest(BaseModel):
    """Body of `POST /v1/generate`: omitted steps/sampler/guidance take the deployment's defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="Text prompt (text-conditioned models).")
    negative_prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description=(
            "Prompt to guide away from; empty/omitted uses the dataset's null (empty-prompt) embedding. Used only "
            "with guidance != 1 on a model that is not guidance-distilled; else dropped and echoed as null."
        ),
    )
    label: int | None = Field(None, ge=0, description="Class label in [0, num_classes) (class-conditioned models).")
    steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Sampler steps (default from the deployment config)."
    )
    sampler: str | None = Field(None, description=f"One of {list(SAMPLERS)} (default from the deployment config).")
    guidance: float | None = Field(
        None, ge=0.0, le=MAX_GUIDANCE, description="Classifier-free guidance scale; 1 = no guidance."
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Seed of the first image; image i uses seed + i. Random when omitted."
    )
    num_images: int = Field(1, ge=1, le=MAX_IMAGES, description="Number of images.")
    steer: SteerRequest | None = Field(None, description="Concept steering {concept, alpha, layer?}.")
    format: Literal["png", "json"] = Field(
        "png", description="'png': raw PNG bytes when num_images == 1; 'json': base64 PNGs."
    )

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str | None) -> str | None:
        if v is not None and v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; expected one of {list(SAMPLERS)}")
        return v


class Settings(BaseModel):
    """The settings a generation actually used (defaults filled in)."""

    steps: int
    sampler: str
    guidance: float
    seed: int
    seeds: list[int]
    num_images: int
    prompt: str | None = None
    negative_prompt: str | None = None
    label: int | None = None
    height: int
    width: int
    batch_images: int = Field(description="Images in the forward batch this request ran in (dynamic batching).")
    checkpoint: str
    steer: dict[str, Any] | None = None


class GeneratedImage(BaseModel):
    """One generated image as a base64-encoded PNG and the seed that produced it."""

    seed: int
    png_base64: str


class GenerateResponse(BaseModel):
    """JSON response of `POST /v1/generate` (several images, or format='json')."""

    images: list[GeneratedImage]
    seeds: list[int]
    settings: Settings


class ModelInfo(BaseModel):
    """Response of `GET /v1/model`: what is being served and what it cost to train."""

    model_config = ConfigDict(protected_namespaces=())

    checkpoint: str
    conditioning: Literal["text", "class"]
    num_classes: int | None = None
    image_size: int
    config: dict[str, Any]
    params: int | None = None
    flops: dict[str, Any] | None = Field(
        None, description="Analytic counts: 1 multiply-add = 2 FLOPs; train = 3 x forward."
    )
    fid: float | None = None
    train_flops: float | None = Field(None, description="Training compute consumed by this checkpoint (FLOPs).")
    state: dict[str, Any] = Field(default_factory=dict)
    registry: dict[str, Any] | None = Field(
        None, description="MLflow registered model version when served as 'champion'."
    )
    defaults: dict[str, Any] = Field(default_factory=dict)
    config_error: str | None = Field(
        None, description="Why the last user_config update was refused (the settings in `defaults` stayed); null."
    )
    samplers: list[str] = Field(default_factory=lambda: list(SAMPLERS))


class Health(BaseModel):
    """Response of `GET /healthz`."""

    status: Literal["ok"] = "ok"


class FieldError(BaseModel):
    """One problem with a request, naming the field it is about."""

    field: str
    message: str


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx response."""

    error: str
    detail: list[FieldError] = Field(default_factory=list)
    request_id: str | None = Field(None, description="Id of the failed request in the service's logs (5xx only).")


def field_name(loc: tuple | list) -> str:
    """Dotted field name from a pydantic error location, without the leading 'body'."""
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) if parts else "body"


def validation_errors(errors: list[dict[str, Any]], content_type: str | None = "application/json") -> list[FieldError]:
    """FastAPI/pydantic error dicts -> FieldErrors whose message starts with the field name.

    `content_type` is the request's Content-Type header: a body sent without a JSON type is never parsed, and the
    error says so instead of calling the body not an object.
    """
    out = []
    for err in errors:
        name = field_name(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            name, msg = "body", f"request body is not valid JSON ({err.get('ctx', {}).get('error', msg)})"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "model_attributes_type" and name != "body":
            msg = "must be a JSON object"
        elif err.get("type") == "model_attributes_type" and not is_json_type(content_type):
            msg = f"Content-Type must be application/json, got {content_type or 'none'!r}"
        elif err.get("type") == "model_attributes_type":
            msg = "request body must be a JSON object"
        elif err.get("type") != "missing" and "input" in err:
            # The value sent, as the sampler's own checks say it: {"steps": 500} read "Input should be less than or
            # equal to 250" alone. A validator's ValueError loses pydantic's "Value error, " prefix.
            msg, got = msg.removeprefix("Value error, "), _shown(err["input"])
            msg = msg if got in msg or repr(err["input"]) in msg else f"{msg} (got {got})"
        out.append(FieldError(field=name, message=f"{name}: {msg}"))
    return out


def _shown(value: Any, limit: int = 60) -> str:
    """A JSON-ish rendering of a request value, cut to `limit` characters."""
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_json_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (application/json or a +json type), as FastAPI decides to parse."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
