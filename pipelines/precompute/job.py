"""Precompute: images + captions -> VAE latents, text embeddings and FID reference statistics, on Ray Data.

    ditscale precompute --config configs/precompute/builtin.yaml [key.sub=value ...]   (pipelines/cli/precompute.py)
    python -m pipelines.precompute --config ...        # the same, e.g. under `ray job submit`

Pipeline (streaming, one Ray Data dataset):
    shard descriptors --map_batches(read + decode, CPU tasks)--> uint8 crops
                      --map_batches(Encoder, actor pool)------> latents / text / FID features
                      --driver--> one parquet shard per input shard, committed atomically

Output layout (DESIGN section 3):
    OUT/data/part-00000.parquet ...   latent rows (tensors as flat fixed-size lists; shapes in the manifest)
    OUT/failures.parquet              id, source, reason (+ shard) of every input that was not written
    OUT/null_text.safetensors         empty-prompt text embedding for classifier-free guidance
    OUT/fid_stats.safetensors         mu float64 [F], sigma float64 [F,F]
    OUT/manifest.json                 written last: its presence means the data set is complete
    OUT/_progress/                    per-shard commit markers, failures and statistics (resume state)

Resume: the input is cut into deterministic shards before any work; a shard is committed by writing
its failures, statistics and data file and then its marker `_progress/part-XXXXX.done.json`. A rerun
(after a crash, SIGKILL or on purpose) skips shards that have a marker and rewrites the others under
the same names, so no row is ever duplicated and the final ids equal those of an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ditcore.config import ConfigError, to_dict
from pipelines.infra import storage
from pipelines.latents.manifest import Manifest
from pipelines.sources import SourceConfig, SourceError, SourcePlan, plan_source
from pipelines.encoders.text import TextEncoderError, TextSpec, resolve_spec

SCHEMA_VERSION = 1
DATA_DIR = "data"
PROGRESS_DIR = "_progress"
NULL_SHARD = -1  # pseudo shard carrying the empty prompt through the encoder
NULL_ID = "<null-text>"
TENSOR_COLUMNS = ("latent_mean", "latent_std", "latent_mean_flip", "latent_std_flip",
                  "text_emb", "text_mask", "text_pooled")

@dataclass
class VAEConfig:
    """The image autoencoder: a diffusers AutoencoderKL directory (local / s3://) or hub id."""

    path: str = "outputs/vae"
    revision: str | None = None
    subfolder: str | None = None  # e.g. "vae" inside a full Stable Diffusion repo


@dataclass
class FIDConfig:
    """The FID feature network whose reference statistics are computed in the same pass."""

    feature_net: str = "outputs/feature_net"  # directory (model.safetensors + config.json) or Inception .pth


@dataclass
class ComputeConfig:
    """Where and how wide to run: Ray address, actor pool size, per-actor resources, batch size, precision."""

    ray_address: str | None = None  # None: RAY_ADDRESS or a local Ray started for this job
    num_cpus: int | None = None  # CPUs of a local Ray (ignored when connecting to a cluster)
    actors: int = 1  # encoder actor pool size
    batch_size: int = 32  # images per encoder call
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    decode_cpus: float = 1.0  # CPUs per read/decode task
    device: str = "auto"  # auto: cuda when the actor has a GPU, else cpu
    dtype: str = "auto"  # auto: bfloat16 (or float16) on GPU, float32 on CPU; or float32/float16/bfloat16

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"compute.actors must be >= 1, got {self.actors}")
        if self.batch_size < 1:
            raise ValueError(f"compute.batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"compute.dtype must be auto/float32/float16/bfloat16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"compute.device must be auto/cpu/cuda, got {self.device!r}")


@dataclass
class PrecomputeConfig:
    """A precompute job: source -> (VAE, text encoder, FID net) -> latent data set at `output`."""

    output: str = "outputs/latents/builtin"
    image_size: int = 32
    source: SourceConfig = field(default_factory=SourceConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextSpec | None = field(default_factory=TextSpec)  # null: class-conditional data set, no text columns
    fid: FIDConfig | None = field(default_factory=FIDConfig)  # null: no FID reference statistics
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    overwrite: bool = False  # delete an existing output first (otherwise: resume it)
    progress: bool = True  # Ray Data progress bars


# ------------------------------------------------------------------------------------------ validation

def _vae_config(vae: VAEConfig) -> dict:
    """The VAE's diffusers config.json (local, s3:// or hub), without loading weights."""
    path = vae.path
    if storage.is_s3(path) or Path(path).expanduser().exists():
        uri = storage.join(path, vae.subfolder, "config.json") if vae.subfolder else storage.join(path, "config.json")
        if storage.is_s3(path):
            if not storage.exists(uri):
                raise ConfigError(f"vae.path: {uri} does not exist (expected a diffusers AutoencoderKL directory)")
        elif not Path(uri).expanduser().is_file():
            raise ConfigError(f"vae.path: {uri} does not exist (expected a diffusers AutoencoderKL directory)")
        return storage.read_json(uri)
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise ConfigError(f"vae.path: directory not found: {path} (train one with `ditscale data train-vae`)")
    try:
        from diffusers import AutoencoderKL

        return dict(AutoencoderKL.load_config(path, subfolder=vae.subfolder, revision=vae.revision))
    except Exception as exc:
        raise ConfigError(f"vae.path: cannot load the config of hub VAE {path!r}: {exc}") from exc


def vae_record(vae: VAEConfig, image_size: int) -> dict:
    """The manifest's `vae` entry from the VAE config (scaling/shift, channels, downsample, latent size)."""
    cfg = _vae_config(vae)
    if cfg.get("_class_name") not in (None, "AutoencoderKL"):
        raise ConfigError(f"vae.path: {vae.path} is a {cfg.get('_class_name')}, expected an AutoencoderKL")
    down = 2 ** (len(cfg.get("block_out_channels", [0])) - 1)
    if image_size % down:
        raise ConfigError(f"image_size={image_size} is not a multiple of the VAE downsample factor {down}")
    rec = {
        "path": vae.path, "revision": vae.revision,
        "scaling_factor": float(cfg.get("scaling_factor", 0.18215)),
        "shift_factor": float(cfg.get("shift_factor") or 0.0),
        "latent_channels": int(cfg.get("latent_channels", 4)),
        "downsample": down, "latent_size": image_size // down,
    }
    if vae.subfolder:
        rec["subfolder"] = vae.subfolder
    return rec


def _check_writable(output: str) -> None:
    """Write and delete a probe object so an unwritable output fails before any work."""
    probe = storage.join(output, PROGRESS_DIR, f".probe-{uuid.uuid4().hex}")
    try:
        storage.write_bytes(probe, b"ok")
        storage.delete(probe)
    except Exception as exc:
        raise ConfigError(f"output: {output} is not writable: {exc}") from exc


def validate(cfg: PrecomputeConfig) -> tuple[SourcePlan, dict]:
    """Check everything a run needs before starting work; returns (shard plan, vae record). Raises ConfigError."""
    if cfg.image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {cfg.image_size}")
    try:
        plan = plan_source(cfg.source, cfg.image_size)
    except SourceError as exc:
        raise ConfigError(f"source: {exc}") from exc
    vae = vae_record(cfg.vae, cfg.image_size)
    if cfg.text is not None:
        try:
            resolve_spec(cfg.text)
        except TextEncoderError as exc:
            raise ConfigError(f"text.encoder: {exc}") from exc
    if cfg.fid is not None and not Path(cfg.fid.feature_net).expanduser().exists():
        raise ConfigError(f"fid.feature_net: not found: {cfg.fid.feature_net} "
                          "(train one with `ditscale data train-features`, or set fid: null)")
    _check_writable(cfg.output)
    return plan, vae


def fingerprint(cfg: PrecomputeConfig, plan: SourcePlan) -> str:
    """Hash of everything that decides the rows (not the compute layout): a resume must match it."""
    content = {
        "image_size": cfg.image_size, "source": to_dict(cfg.source), "vae": to_dict(cfg.vae),
        "text": to_dict(cfg.text), "fid": to_dict(cfg.fid),
        "shards": [[s["shard"], s.get("count"), s.get("file"), s.get("start"), (s.get("files") or [None])[0]]
                   for s in plan.shards],
    }
    content["shards"] = hashlib.sha256(json.dumps(content.pop("shards")).encode()).hexdigest()
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- ray data stages

def _read_and_decode(batch: dict[str, np.ndarray], source: SourceConfig, classes: list[str] | None,
                     image_size: int, require_captions: bool, filesystem: Any = None) -> dict[str, np.ndarray]:
    """Ray task: shard descriptors -> decoded rows (uint8 crops + metadata + error)."""
    from pipelines.precompute.encode import decode_batch
    from pipelines.sources import _rows, read_shard

    parts = []
    for d in batch["desc"]:
        desc = json.loads(d)
        if desc["kind"] == "null":
            # The empty prompt rides through the encoder actors as one extra row, so the null text
            # embedding costs no separate model load; the driver takes it out and never counts it.
            rows = _rows(desc, [{"id": NULL_ID, "source": "null-text", "caption": ""}])
            rows["image"] = np.zeros((1, image_size, image_size, 3), np.uint8)
            parts.append(decode_batch(rows, image_size, require_captions))
        else:
            parts.append(decode_batch(read_shard(desc, source, classes, filesystem), image_size, require_captions))
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------------------- writing

def _part(shard: int) -> str:
    return f"part-{shard:05d}"


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _tensor_field(name: str, arr: np.ndarray):
    """A flat fixed-size list column (plain pyarrow/pandas/Ray all read it) carrying its shape as metadata."""
    import pyarrow as pa

    n = arr.shape[0]
    shape = list(arr.shape[1:])
    size = int(np.prod(shape)) if shape else 1
    values = pa.array(np.ascontiguousarray(arr).reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(values, size)
    assert len(col) == n
    fld = pa.field(name, col.type, nullable=False, metadata={b"shape": json.dumps(shape).encode(),
                                                             b"dtype": str(arr.dtype).encode()})
    return fld, col


def failures_schema():
    """Schema of failures.parquet."""
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("shard", pa.int32())])


class ShardWriter:
    """Driver side: gathers encoded rows per shard and commits each complete shard atomically."""

    def __init__(self, output: str, has_labels: bool, has_text: bool, has_fid: bool) -> None:
        self.output = output
        self.has_labels, self.has_text, self.has_fid = has_labels, has_text, has_fid
        self.columns: dict[str, dict] = {}
        self.pending: dict[int, list[dict[str, np.ndarray]]] = {}
        self.seen: dict[int, int] = {}
        self.totals: dict[int, int] = {}
        self.markers: dict[int, dict] = {}
        self.rows_done = 0
        self.null_text: dict[str, np.ndarray] | None = None

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Buffer a batch; commit every shard it completes."""
        shards = np.asarray(batch["shard"])
        if (shards == NULL_SHARD).any():
            i = int(np.flatnonzero(shards == NULL_SHARD)[0])
            if batch["error"][i]:
                raise RuntimeError(f"encoding the empty prompt failed: {batch['error'][i]}")
            self.null_text = {k: np.ascontiguousarray(batch[k][i]) for k in ("text_emb", "text_mask", "text_pooled")}
            keep = shards != NULL_SHARD
            batch = {k: np.asarray(v)[keep] for k, v in batch.items()}
            shards = shards[keep]
        for s in np.unique(shards):
            sel = shards == s
            part = {k: np.asarray(v)[sel] for k, v in batch.items()}
            s = int(s)
            self.pending.setdefault(s, []).append(part)
            self.seen[s] = self.seen.get(s, 0) + int(sel.sum())
            self.totals[s] = int(part["shard_total"][0])
            if self.seen[s] >= self.totals[s]:
                self.commit(s, self.pending.pop(s))

    def commit(self, shard: int, parts: list[dict[str, np.ndarray]]) -> dict:
        """Write failures, statistics and data of one shard, then its marker (the commit point)."""
        import pyarrow as pa
        from safetensors.numpy import save as st_save

        from ditcore.metrics.fid import FeatureStats

        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        n = len(rows.get("id", []))
        order = np.argsort(rows["order"], kind="stable") if n else np.zeros(0, int)
        rows = {k: v[order] for k, v in rows.items()}
        errors = [str(e) for e in rows.get("error", [])]
        good = np.array([not e for e in errors], dtype=bool)
        bad = ~good
        name = _part(shard)
        prog = storage.join(self.output, PROGRESS_DIR)
        # failures
        fail_table = pa.table({
            "id": pa.array([str(x) for x in rows["id"][bad]] if n else [], pa.string()),
            "source": pa.array([str(x) for x in rows["source"][bad]] if n else [], pa.string()),
            "reason": pa.array([e for e in errors if e], pa.string()),
            "shard": pa.array([shard] * int(bad.sum()), pa.int32()),
        }, schema=failures_schema())
        storage.write_bytes(storage.join(prog, f"{name}.failures.parquet"), _parquet_bytes(fail_table))
        # statistics: latent per-channel sums and FID (count, mean, M2), mergeable across shards
        written = int(good.sum())
        stats: dict[str, np.ndarray] = {"count": np.array([written], np.int64)}
        if written:
            lat = rows["latent_mean"][good].astype(np.float64)  # [N,C,h,w]
            stats["lat_sum"] = lat.sum(axis=(0, 2, 3))
            stats["lat_sumsq"] = (lat ** 2).sum(axis=(0, 2, 3))
            stats["lat_elems"] = np.array([lat.shape[0] * lat.shape[2] * lat.shape[3]], np.int64)
            if self.has_fid:
                fs = FeatureStats().update(rows["fid_feat"][good])
                stats["fid_mean"], stats["fid_m2"] = fs.mean, fs.m2
        storage.write_bytes(storage.join(prog, f"{name}.stats.safetensors"), st_save(stats))
        # data
        if written:
            fields, cols = [pa.field("id", pa.string(), nullable=False)], [pa.array([str(x) for x in rows["id"][good]], pa.string())]
            if self.has_labels:
                lab = rows["label"][good]
                fields.append(pa.field("label", pa.int32()))
                cols.append(pa.array([None if v < 0 else int(v) for v in lab], pa.int32()))
            fields.append(pa.field("caption", pa.string()))
            cols.append(pa.array([str(c) if h else None for c, h in zip(rows["caption"][good], rows["has_caption"][good])],
                                 pa.string()))
            for col in TENSOR_COLUMNS:
                if col not in rows:
                    continue
                arr = rows[col][good]
                fld, c = _tensor_field(col, arr)
                fields.append(fld)
                cols.append(c)
                self.columns[col] = {"dtype": str(arr.dtype), "shape": list(arr.shape[1:])}
            table = pa.Table.from_arrays(cols, schema=pa.schema(fields))
            storage.write_bytes(storage.join(self.output, DATA_DIR, f"{name}.parquet"), _parquet_bytes(table))
        labels = rows["label"][good] if n else np.zeros(0)
        marker = {"shard": shard, "input": n, "written": written, "failed": int(bad.sum()),
                  "max_label": int(labels.max()) if len(labels) else -1,
                  "columns": dict(self.columns) if written else {}}
        storage.write_json(storage.join(prog, f"{name}.done.json"), marker)
        self.markers[shard] = marker
        self.rows_done += n
        return marker


def _done_markers(output: str, shards: list[int]) -> dict[int, dict]:
    """Markers of the planned shards that are already committed (one listing, parallel reads)."""
    prog = storage.join(output, PROGRESS_DIR)
    names = set(storage.listdir(prog))
    wanted = [s for s in shards if f"{_part(s)}.done.json" in names]
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(lambda s: storage.read_json(storage.join(prog, f"{_part(s)}.done.json")), wanted))
    return {m["shard"]: m for m in found}


def _clean_stale(output: str) -> None:
    """Remove temp files that a killed run left behind (local writes are tmp + rename)."""
    if storage.is_s3(output):
        return  # S3 PUTs are atomic: no temp objects exist
    for sub in (DATA_DIR, PROGRESS_DIR):
        d = Path(output) / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)


def code_version() -> str:
    """The code that ran: git:<short rev> in a checkout, else the installed package version."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[2],
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            return f"git:{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"ditscale=={version('ditscale')}"
    except Exception:
        return "unknown"


def _finalize(cfg: PrecomputeConfig, plan: SourcePlan, vae: dict, markers: dict[int, dict],
              null_text: dict[str, np.ndarray] | None, text_identity: dict | None) -> Manifest:
    """Merge per-shard failures and statistics; write failures.parquet, stats files and manifest.json (last)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    from ditcore.metrics.fid import FeatureStats

    out, prog = cfg.output, storage.join(cfg.output, PROGRESS_DIR)
    ids = [s["shard"] for s in plan.shards]
    missing = [s for s in ids if s not in markers]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} were not committed; rerun to resume")

    def load(s: int):
        fail = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(prog, f"{_part(s)}.failures.parquet"))))
        stats = st_load(storage.read_bytes(storage.join(prog, f"{_part(s)}.stats.safetensors")))
        return fail, stats

    with ThreadPoolExecutor(max_workers=16) as pool:
        loaded = list(pool.map(load, ids))
    failures = pa.concat_tables([f for f, _ in loaded]) if loaded else failures_schema().empty_table()
    storage.write_bytes(storage.join(out, "failures.parquet"), _parquet_bytes(failures))

    counts = {"input": sum(markers[s]["input"] for s in ids), "written": sum(markers[s]["written"] for s in ids),
              "failed": sum(markers[s]["failed"] for s in ids)}
    assert counts["input"] == counts["written"] + counts["failed"], counts
    assert failures.num_rows == counts["failed"], (failures.num_rows, counts)

    c = vae["latent_channels"]
    lat_sum, lat_sumsq, lat_n = np.zeros(c), np.zeros(c), 0
    fid = FeatureStats()
    for _, st in loaded:  # shard order: the merged statistics do not depend on which run wrote which shard
        if int(st["count"][0]) == 0:
            continue
        lat_sum += st["lat_sum"]
        lat_sumsq += st["lat_sumsq"]
        lat_n += int(st["lat_elems"][0])
        if "fid_mean" in st:
            fid._combine(int(st["count"][0]), st["fid_mean"], st["fid_m2"])
    lat_mean = lat_sum / max(lat_n, 1)
    lat_std = np.sqrt(np.maximum(lat_sumsq / max(lat_n, 1) - lat_mean ** 2, 0.0))

    fid_record = None
    if cfg.fid is not None:
        if fid.count >= 2:
            mu, sigma = fid.compute()
            storage.write_bytes(storage.join(out, "fid_stats.safetensors"),
                                st_save({"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)},
                                        metadata={"count": str(fid.count), "feature_net": cfg.fid.feature_net}))
            fid_record = {"feature_net": cfg.fid.feature_net, "feature_dim": int(mu.shape[0]),
                          "stats": "fid_stats.safetensors", "count": int(fid.count)}
        else:
            fid_record = {"feature_net": cfg.fid.feature_net, "feature_dim": None, "stats": None, "count": int(fid.count),
                          "note": "fewer than 2 rows written: no covariance"}

    text_record = None
    if cfg.text is not None and text_identity is not None:
        if null_text is not None:
            storage.write_bytes(storage.join(out, "null_text.safetensors"),
                                st_save({k: np.ascontiguousarray(v) for k, v in null_text.items()}))
        text_record = {**text_identity, "null": "null_text.safetensors"}

    columns: dict[str, dict] = {}
    for s in ids:
        columns.update(markers[s].get("columns", {}))
    num_classes = plan.num_classes
    if num_classes is None and plan.has_labels:
        top = max((markers[s]["max_label"] for s in ids), default=-1)
        num_classes = top + 1 if top >= 0 else None
    manifest = Manifest.from_dict({
        "schema_version": SCHEMA_VERSION,
        "source": plan.description,
        "image_size": cfg.image_size,
        "num_classes": num_classes,
        "classes": plan.classes,
        "counts": counts,
        "vae": vae,
        "text": text_record,
        "latent_stats": {"mean": lat_mean.tolist(), "std": lat_std.tolist(), "of": "latent_mean"},
        "fid": fid_record,
        "columns": columns,
        "data": DATA_DIR,
        "failures": "failures.parquet",
        "shards": len(ids),
        "config": to_dict(cfg),
        "code_version": code_version(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, where=f"{out}/manifest.json")
    manifest.write(out)
    return manifest


# ------------------------------------------------------------------------------------------------ run

def _init_ray(cfg: PrecomputeConfig) -> bool:
    """Connect to / start Ray; True when this call started it (and should shut it down)."""
    from pipelines.infra.ray_runtime import init_ray

    return init_ray(cfg.compute.ray_address, num_cpus=cfg.compute.num_cpus)


def run_precompute(cfg: PrecomputeConfig) -> dict:
    """Run (or resume) a precompute job; returns the summary dict (counts, rows/s, output, manifest)."""
    t0 = time.monotonic()
    plan, vae = validate(cfg)  # before anything is written or deleted
    out = cfg.output
    if cfg.overwrite and storage.exists(out):
        storage.delete(out)
    fp = fingerprint(cfg, plan)
    plan_uri = storage.join(out, PROGRESS_DIR, "plan.json")
    if storage.exists(plan_uri):
        old = storage.read_json(plan_uri)
        if old.get("fingerprint") != fp:
            raise ConfigError(
                f"output {out} holds a run with a different source/encoder config (fingerprint {old.get('fingerprint')} "
                f"!= {fp}); use a new output path or overwrite=true")
    else:
        storage.write_json(plan_uri, {"fingerprint": fp, "shards": len(plan.shards), "config": to_dict(cfg)})
    _clean_stale(out)

    started = _init_ray(cfg)
    try:
        shard_ids = [s["shard"] for s in plan.shards]
        markers = _done_markers(out, shard_ids)
        todo = [s for s in plan.shards if s["shard"] not in markers]
        skipped = len(markers)
        null_uri = storage.join(out, "null_text.safetensors")
        need_null = cfg.text is not None and not storage.exists(null_uri)
        work = ([{"shard": NULL_SHARD, "kind": "null"}] if need_null else []) + todo
        writer = ShardWriter(out, plan.has_labels, cfg.text is not None, cfg.fid is not None)
        t_run = time.monotonic()
        t_first, rows_first = None, 0
        if work:
            ds = build_dataset(cfg, plan, work)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                if t_first is None:  # actors are up: what follows is the steady-state rate
                    t_first, rows_first = time.monotonic(), len(batch["id"])
                writer.add(batch)
            # Shards that produced no rows at all (e.g. an empty tar) are complete too.
            for s in todo:
                sid = s["shard"]
                if sid not in writer.markers:
                    if writer.pending.get(sid):
                        raise RuntimeError(f"shard {sid}: saw {writer.seen.get(sid)} of {writer.totals.get(sid)} rows")
                    writer.commit(sid, [])
        t_end = time.monotonic()
        run_s = t_end - t_run
        markers.update(writer.markers)
        null_text = writer.null_text
        if cfg.text is not None and null_text is None:
            from safetensors.numpy import load as st_load

            null_text = st_load(storage.read_bytes(null_uri))
        text_identity = None
        if cfg.text is not None:
            text_identity = _text_identity(cfg, null_text)
        manifest = _finalize(cfg, plan, vae, markers, null_text, text_identity)
    finally:
        if started:
            import ray

            ray.shutdown()
    counts = to_dict(manifest.counts)
    total_s = time.monotonic() - t0
    summary = {
        "output": out, **counts, "shards": len(plan.shards), "shards_skipped": skipped,
        "rows_this_run": writer.rows_done, "run_seconds": round(run_s, 3), "total_seconds": round(total_s, 3),
        "rows_per_s": round(writer.rows_done / run_s, 2) if run_s > 0 and writer.rows_done else 0.0,
        # After the first batch arrived (actor start-up and model loading excluded).
        "steady_rows_per_s": round((writer.rows_done - rows_first) / (t_end - t_first), 2)
        if t_first is not None and t_end > t_first and writer.rows_done > rows_first else None,
        "manifest": storage.join(out, "manifest.json"),
    }
    return summary


def _text_identity(cfg: PrecomputeConfig, null_text: dict[str, np.ndarray] | None) -> dict:
    """Text encoder record for the manifest (dims taken from the null embedding, so no model loads here)."""
    assert cfg.text is not None
    spec = resolve_spec(cfg.text)
    from pipelines.encoders.text import DEFAULT_MAX_LENGTH, MINILM

    rec = {"encoder": spec.encoder, "revision": spec.revision,
           "max_length": spec.max_length or (DEFAULT_MAX_LENGTH["minilm"] if spec.encoder == MINILM else None)}
    if spec.subfolder:
        rec["subfolder"] = spec.subfolder
    if null_text is not None:
        rec["max_length"] = int(null_text["text_emb"].shape[0])
        rec["dim"] = int(null_text["text_emb"].shape[1])
        rec["pooled_dim"] = int(null_text["text_pooled"].shape[0])
    return rec


def read_dataset(cfg: PrecomputeConfig, plan: SourcePlan, shards: list[dict]):
    """Ray Dataset of decoded rows (uint8 crops + id/shard/caption/label/error) for `shards`: the CPU stage."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    items = [{"desc": json.dumps(s)} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))  # one block per shard
    return ds.map_batches(
        _read_and_decode, batch_size=1, num_cpus=cfg.compute.decode_cpus,
        fn_kwargs={"source": cfg.source, "classes": plan.classes, "image_size": cfg.image_size,
                   "require_captions": cfg.text is not None,
                   # The driver's filesystem (S3 endpoint + credentials) travels with the tasks.
                   "filesystem": storage.get_fs(cfg.source.path)[0] if cfg.source.path else None},
    )


def build_dataset(cfg: PrecomputeConfig, plan: SourcePlan, shards: list[dict]):
    """The streaming pipeline over `shards`: read+decode tasks, then the encoder actor pool.

    Ray Data fuses the read stage into the actors when their resources match (CPU-only runs), so each
    actor decodes its own rows; with GPU actors the stages stay apart and decode scales over the CPUs.
    """
    import ray

    from pipelines.precompute.encode import Encoder, default_num_threads

    c = cfg.compute
    # batch_size=None: one call per input block = one shard (fused: one shard descriptor), so shards
    # spread over the actors and stream out one by one; a batch_size here would make Ray bundle that
    # many *descriptors* into one task. The Encoder cuts each shard into model batches itself.
    return read_dataset(cfg, plan, shards).map_batches(
        Encoder, batch_size=None, compute=ray.data.ActorPoolStrategy(size=c.actors),
        num_cpus=c.cpus_per_actor, num_gpus=c.gpus_per_actor,
        fn_constructor_kwargs={
            "vae": to_dict(cfg.vae), "text": to_dict(cfg.text) if cfg.text is not None else None,
            "feature_net": cfg.fid.feature_net if cfg.fid is not None else None, "image_size": cfg.image_size,
            "device": c.device if c.gpus_per_actor > 0 or c.device != "auto" else "cpu", "dtype": c.dtype,
            "num_threads": default_num_threads(c.cpus_per_actor), "batch_size": c.batch_size,
        },
    )


def format_summary(s: dict) -> str:
    """The one-line summary printed at the end of a run."""
    return (f"precompute: {s['input']} input = {s['written']} written + {s['failed']} failed; "
            f"{s['rows_this_run']} rows this run in {s['run_seconds']:.1f}s ({s['rows_per_s']:.1f} rows/s); "
            f"{s['shards_skipped']}/{s['shards']} shards already done -> {s['output']}")


