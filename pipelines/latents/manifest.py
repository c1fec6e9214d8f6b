"""The latent-dataset manifest (`manifest.json`) as typed records: what the precompute writes, what jobs read.

A latent data set is a directory (local or s3://) of parquet shards plus `manifest.json`, written last, so its
presence means the set is complete. The records here are the one definition of that file: `Manifest.read`
checks every key and type (an unknown or mistyped key is an error naming it) and every reader uses attributes,
never `.get(...)` on raw JSON. docs/architecture.md, "Latent dataset", describes the whole contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ditcore.config import ConfigError, from_dict, to_dict
from pipelines.infra import storage

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class LatentDatasetError(ValueError):
    """The URI is not a complete latent data set (missing manifest, unknown schema version, missing file)."""


@dataclass
class Counts:
    """Inputs seen, rows written and inputs failed; `input == written + failed` always holds. `duplicate_ids`:
    written rows whose id an earlier row already has (written all the same; the source names a few)."""

    input: int = 0
    written: int = 0
    failed: int = 0
    duplicate_ids: int = 0


@dataclass
class VAERecord:
    """The image autoencoder the latents come from and the factors that map them to model space."""

    path: Optional[str] = None  # diffusers AutoencoderKL directory, s3:// prefix or hub id
    revision: Optional[str] = None
    scaling_factor: float = 1.0  # z_model = (z - shift_factor) * scaling_factor
    shift_factor: float = 0.0
    latent_channels: int = 4
    downsample: int = 8
    latent_size: int = 0
    subfolder: Optional[str] = None


@dataclass
class TextPartRecord:
    """One encoder of a joined (multi-encoder) text condition and where its output sits in the joined tensors."""

    name: str = ""
    encoder: str = ""
    kind: Optional[str] = None
    revision: Optional[str] = None
    subfolder: Optional[str] = None
    tokenizer_subfolder: Optional[str] = None
    max_length: int = 0
    dim: int = 0
    pooled_dim: int = 0
    join: str = "concat"  # concat: feature axis with the previous block; append: a new block on the sequence axis
    pooled: bool = True  # its pooled vector is part of text_pooled
    block: int = 0
    seq: list[int] = field(default_factory=list)  # [s0, s1): its positions in text_emb / text_mask
    feat: list[int] = field(default_factory=list)  # [f0, f1): its features in text_emb
    pooled_slice: Optional[list[int]] = None  # [p0, p1) in text_pooled, None when not pooled

    def layout(self) -> dict[str, Any]:
        """The dict form pipelines.encoders.text's joining functions take."""
        return to_dict(self)


@dataclass
class TextRecord:
    """The caption encoder(s) and where the empty-prompt (null) embedding for classifier-free guidance is.

    One encoder: `encoder` names it. Several (SD3 style): `kind` is "multi", `encoder` joins their names with "+",
    `encoders` lists each with its slices, and max_length / dim / pooled_dim are the joined tensors' sizes.
    """

    encoder: str = "minilm"
    kind: Optional[str] = None  # minilm | clip | t5 | auto
    revision: Optional[str] = None
    max_length: Optional[int] = None
    dim: Optional[int] = None
    pooled_dim: Optional[int] = None
    null: Optional[str] = None  # file (relative to the data set) holding the null text embedding
    subfolder: Optional[str] = None
    encoders: Optional[list[TextPartRecord]] = None  # several encoders joined; None: the one `encoder`

    def layouts(self) -> list[dict[str, Any]]:
        """The per-encoder layout records of a multi-encoder set ([] for a single encoder)."""
        return [p.layout() for p in self.encoders or []]


@dataclass
class FIDRecord:
    """The FID feature network and the reference statistics computed with it over the data set."""

    feature_net: Optional[str] = None
    feature_dim: Optional[int] = None
    stats: Optional[str] = None  # file (relative to the data set) holding mu [F], sigma [F,F]
    count: int = 0  # rows the statistics were computed from
    note: Optional[str] = None


@dataclass
class ColumnSpec:
    """Shape (per row) and dtype of a tensor column stored as a flat fixed-size list."""

    shape: list[int] = field(default_factory=list)
    dtype: str = "float16"


@dataclass
class Manifest:
    """manifest.json of a latent data set (schema version 1)."""

    schema_version: int = SCHEMA_VERSION
    source: dict[str, Any] = field(default_factory=dict)  # what the rows were made from (kind, path, counts...)
    image_size: int = 0
    num_classes: Optional[int] = None
    classes: Optional[list[str]] = None
    counts: Counts = field(default_factory=Counts)
    vae: VAERecord = field(default_factory=VAERecord)
    text: Optional[TextRecord] = None
    latent_stats: dict[str, Any] = field(default_factory=dict)  # per-channel mean/std of latent_mean
    fid: Optional[FIDRecord] = None
    columns: dict[str, ColumnSpec] = field(default_factory=dict)
    data: str = "data"  # directory of the parquet shards
    failures: str = "failures.parquet"
    shards: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the resolved precompute config
    code_version: str = "unknown"
    created_at: str = ""

    @property
    def is_text(self) -> bool:
        """Whether rows carry text embeddings (text-to-image) rather than only class labels."""
        return self.text is not None

    @property
    def builtin_source(self) -> bool:
        """Whether the rows are the built-in shapes data (their objects can be recovered from the ids)."""
        return self.source.get("kind") == "builtin"

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest.json") -> "Manifest":
        """Parse and check a manifest document; errors name the bad key."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise LatentDatasetError(
                f"{where}: unsupported schema_version {data.get('schema_version')!r} "
                f"(this version reads {SCHEMA_VERSION})"
            )
        try:
            return from_dict(cls, data)
        except ConfigError as exc:
            raise LatentDatasetError(f"{where}: {exc}") from exc

    @classmethod
    def read(cls, uri: str) -> "Manifest":
        """The manifest of the data set at `uri`; a directory without one is incomplete (or not a data set)."""
        path = storage.join(dataset_root(uri), MANIFEST_NAME)
        if not storage.exists(path):
            raise LatentDatasetError(
                f"{uri} is not a complete latent data set: no {MANIFEST_NAME} "
                "(an interrupted precompute? rerun it to resume)"
            )
        return cls.from_dict(storage.read_json(path), where=path)

    def write(self, uri: str) -> None:
        """Write manifest.json into the data set directory `uri` (last, as the completion marker)."""
        storage.write_json(storage.join(uri, MANIFEST_NAME), self.to_dict())


def dataset_root(uri: str) -> str:
    """The data set directory of `uri`, which may name the directory or its manifest.json."""
    u = str(uri).rstrip("/")
    return u.rsplit("/", 1)[0] if u.endswith("/" + MANIFEST_NAME) or u == MANIFEST_NAME else u
