"""Planning a precompute job: every check that needs no cluster, the shard plan, and the run's fingerprint.

`validate(cfg)` fails before anything is written or started: the source must list, the VAE's config must load (local,
s3:// or hub), the text encoder must resolve, the FID feature net must exist (local or s3://) and the output must be
writable. `fingerprint` hashes everything that decides the rows, so a resume into the same output must match it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from ditcore.config import ConfigError, to_dict
from pipelines.encoders.text import TextEncoderError, is_multi, resolve_parts, resolve_spec
from pipelines.infra import storage
from pipelines.precompute.config import ComputeConfig, PrecomputeConfig, VAEConfig
from pipelines.sources import SourceError, SourcePlan, plan_source

PROGRESS_DIR = "_progress"


def check_feature_net(uri: str) -> None:
    """The FID feature net directory must hold config.json (local path or s3:// prefix)."""
    if not storage.exists(storage.join(uri, "config.json")):
        raise ConfigError(
            f"fid.feature_net: no feature network at {uri} (expected a directory with config.json; "
            "train one with `ditscale data train-features`, convert the standard one with "
            "`ditscale data inception`, or set fid: null)"
        )


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


def pixel_record(image_size: int) -> dict:
    """The manifest's `vae` entry of a pixel-space data set (`vae: null`): no autoencoder, the rows are RGB images
    in [-1, 1] (scale 1, no shift, 3 channels, no downsampling)."""
    return {
        "path": None,
        "revision": None,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
        "latent_channels": 3,
        "downsample": 1,
        "latent_size": image_size,
    }


def vae_record(vae: VAEConfig | None, image_size: int) -> dict:
    """The manifest's `vae` entry from the VAE config (scaling/shift, channels, downsample, latent size)."""
    if vae is None:
        return pixel_record(image_size)
    cfg = _vae_config(vae)
    if cfg.get("_class_name") not in (None, "AutoencoderKL"):
        raise ConfigError(f"vae.path: {vae.path} is a {cfg.get('_class_name')}, expected an AutoencoderKL")
    down = 2 ** (len(cfg.get("block_out_channels", [0])) - 1)
    if image_size % down:
        raise ConfigError(f"image_size={image_size} is not a multiple of the VAE downsample factor {down}")
    rec = {
        "path": vae.path,
        "revision": vae.revision,
        "scaling_factor": float(cfg.get("scaling_factor", 0.18215)),
        "shift_factor": float(cfg.get("shift_factor") or 0.0),
        "latent_channels": int(cfg.get("latent_channels", 4)),
        "downsample": down,
        "latent_size": image_size // down,
    }
    if vae.subfolder:
        rec["subfolder"] = vae.subfolder
    return rec


def _check_writable(output: str) -> None:
    """Write and delete a probe object so an unwritable output fails before any work. It goes in `output` itself: a
    probe in a `_progress/` folder left that folder behind on local disk, which marked a folder of other files as a
    run that started a data set (so a later overwrite=true deleted it)."""
    probe = storage.join(output, f".probe-{uuid.uuid4().hex}")
    try:
        storage.write_bytes(probe, b"ok")
        storage.delete(probe)
    except Exception as exc:
        raise ConfigError(f"output: {output} is not writable: {exc}") from exc


def check_apart(source: str, output: str) -> None:
    """The output must be neither the source nor inside it nor around it: a rerun would read its own rows as input,
    and overwrite=true would delete the images."""
    where = storage.overlap(source, output)
    if where in ("same", "inside"):
        raise ConfigError(
            f"output: {output} is {'the source folder' if where == 'same' else 'inside the source'} {source}; "
            "write the data set somewhere else (its files would be read as input, and overwrite=true deletes them)"
        )
    if where == "contains":
        raise ConfigError(
            f"output: {output} holds the source {source}; write the data set somewhere else "
            "(overwrite=true would delete the source)"
        )


def _latent_manifest(output: str) -> bool:
    """Whether `output`/manifest.json reads as a latent data set's (a manifest.json of anything else, such as the
    shipped encoders' folder, does not make a folder replaceable)."""
    try:
        m = storage.read_json(storage.join(output, "manifest.json"))
    except ValueError:  # not JSON; a read error (S3 throttled) raises as itself
        return False
    return isinstance(m, dict) and {"schema_version", "vae", "counts", "columns"} <= set(m)


def check_replaceable(output: str) -> None:
    """overwrite=true deletes `output` whole: only a latent data set (or a run that started one) may be there, never
    the working directory, a folder holding it, or a directory of other files (a typo'd `output=outputs`)."""
    try:
        storage.refuse_working_dir(output, "latent data set")
    except ValueError as e:
        raise ConfigError(f"output: {e}") from None
    if storage.is_bucket_root(output):
        raise ConfigError(f"output: {output} is a bucket, not a folder in one: overwrite=true would empty it")
    if not storage.exists(output):
        return
    if not storage.is_dir(output):
        raise ConfigError(f"output: {output} exists and is not a directory")
    names = storage.listdir(output)
    if PROGRESS_DIR in names and not storage.exists(storage.join(output, PROGRESS_DIR, "plan.json")):
        names.remove(PROGRESS_DIR)  # a started run writes its plan.json first: a bare _progress/ marks nothing
    if names and PROGRESS_DIR not in names and "manifest.json" in names and not _latent_manifest(output):
        raise ConfigError(
            f"output: {output} holds a manifest.json that is not a latent data set's (no schema_version, vae, "
            "counts and columns): overwrite=true would delete the folder; choose a new or empty directory"
        )
    if names and not {"manifest.json", PROGRESS_DIR} & set(names):
        raise ConfigError(
            f"output: {output} holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}, not a latent data set "
            f"(no manifest.json or {PROGRESS_DIR}/plan.json): overwrite=true would delete it; choose a new or empty "
            "directory"
        )


def validate(cfg: PrecomputeConfig) -> tuple[SourcePlan, dict]:
    """Check everything a run needs before starting work; returns (shard plan, vae record). Raises ConfigError."""
    if cfg.image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {cfg.image_size}")
    storage.check_location(cfg.output, "output")
    if cfg.source.path is not None and cfg.source.kind != "builtin":
        storage.check_location(cfg.source.path, "source.path")
        check_apart(cfg.source.path, cfg.output)
    if cfg.overwrite:
        check_replaceable(cfg.output)
    if cfg.source.kind == "webdataset" and cfg.source.limit is not None:
        raise ConfigError(
            f"source.limit={cfg.source.limit} cannot apply to a WebDataset precompute: a tar's sample count is only "
            "known once it is read, and the tars are encoded in parallel; point source.path at a folder (or one .tar) "
            "holding the tars wanted, or leave source.limit unset"
        )
    try:
        plan = plan_source(cfg.source, cfg.image_size)
    except SourceError as exc:
        raise ConfigError(f"source: {exc}") from exc
    if not plan.shards:
        if cfg.source.kind == "builtin":
            raise ConfigError(f"source.count: {cfg.source.count} leaves the built-in set without images (>= 1)")
        raise ConfigError(f"source: no input files under {cfg.source.path} (kind {cfg.source.kind})")
    vae = vae_record(cfg.vae, cfg.image_size)
    if is_multi(cfg.text):
        try:
            resolve_parts(cfg.text)
        except TextEncoderError as exc:
            raise ConfigError(str(exc)) from exc
    elif cfg.text is not None:
        try:
            resolve_spec(cfg.text)
        except TextEncoderError as exc:
            raise ConfigError(f"text.encoder: {exc}") from exc
    if cfg.fid is not None:
        check_feature_net(cfg.fid.feature_net)
    _check_writable(cfg.output)
    return plan, vae


def _dtype_record(c: ComputeConfig) -> dict[str, str]:
    """The fingerprint's dtype entry: an explicit compute.dtype, or "auto" resolved as far as the driver can.

    "auto" is float32 on CPU but bfloat16 / float16 on a GPU, so an auto run resumed with GPUs (or without) would
    mix rows of two precisions: on a GPU it is "auto-gpu". Absent for auto on CPU, so old runs keep their print."""
    if c.dtype != "auto":
        return {"dtype": c.dtype}
    on_gpu = c.device.startswith("cuda") or (c.gpus_per_actor > 0 and c.device == "auto")
    return {"dtype": "auto-gpu"} if on_gpu else {}


def fingerprint(cfg: PrecomputeConfig, plan: SourcePlan) -> str:
    """Hash of everything that decides the rows (not the compute layout, but an explicit compute.dtype): a resume
    must match it."""
    content = {
        "image_size": cfg.image_size,
        # Fields added with their default left out, so outputs written before they existed still resume.
        "source": {k: v for k, v in to_dict(cfg.source).items() if not (k == "num_classes" and v is None)},
        "vae": to_dict(cfg.vae),
        "text": to_dict(cfg.text),
        "fid": to_dict(cfg.fid),
        **_dtype_record(cfg.compute),
        "shards": [
            [s["shard"], s.get("count"), s.get("file"), s.get("start"), (s.get("files") or [None])[0]]
            for s in plan.shards
        ],
    }
    content["shards"] = hashlib.sha256(json.dumps(content.pop("shards")).encode()).hexdigest()
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]
