"""Precompute: images + captions -> VAE latents, text embeddings and FID reference statistics, on Ray Data.

    ditscale precompute --config configs/precompute/builtin.yaml [key.sub=value ...]   (pipelines/cli/precompute.py)
    python -m pipelines.precompute --config ...        # the same, e.g. under `ray job submit`

One streaming Ray Data pipeline, the driver only orchestrating:
    shard descriptors --map_batches(read + decode, CPU tasks)--> chunks of uint8 crops (tars streamed)
                      --map_batches(Encoder, actor pool)------> latents / text / FID features
                      --write_datasink(PartSink, write tasks)--> parquet parts + failures + statistics + markers
Only the parts' markers (counts, column specs) come back to the driver, which then merges statistics one part at a
time and writes manifest.json last (docs/architecture.md, "Latent dataset"):
    OUT/data/part-SSSSS-FFFFFFF.parquet  latent rows (tensors as flat fixed-size lists; shapes in the manifest)
    OUT/failures.parquet                 id, source, reason (+ shard) of every input that was not written
    OUT/null_text.safetensors            empty-prompt text embedding for classifier-free guidance
    OUT/fid_stats.safetensors            mu float64 [F], sigma float64 [F,F]
    OUT/manifest.json                    written last: its presence means the data set is complete
    OUT/_progress/                       per-part markers, failures and statistics (resume state)

Resume: the input is cut into deterministic shards before any work; a rerun (after a crash, SIGKILL or on purpose)
keeps every complete shard, clears the parts of incomplete ones and does those again, so no row is ever duplicated
and the final ids equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from ditcore.config import ConfigError, to_dict
from pipelines.encoders.text import resolve_spec
from pipelines.infra import storage
from pipelines.latents.manifest import Manifest
from pipelines.precompute.config import ComputeConfig, FIDConfig, PrecomputeConfig, VAEConfig
from pipelines.precompute.finalize import clear_shards, finalize, is_complete, mark_empty, read_markers
from pipelines.precompute.plan import PROGRESS_DIR, check_replaceable, fingerprint, validate
from pipelines.precompute.sink import NULL_ID, NULL_SHARD, NULL_TEXT_FILE, PartSink
from pipelines.sources import SourceConfig, SourcePlan

__all__ = [
    "ComputeConfig",
    "FIDConfig",
    "PrecomputeConfig",
    "SourceConfig",
    "VAEConfig",
    "build_dataset",
    "code_version",
    "format_summary",
    "read_dataset",
    "run_precompute",
]


def code_version() -> str:
    """The code that ran: git:<short rev> in a checkout, else the installed package version."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if rev.returncode == 0 and rev.stdout.strip():
            return f"git:{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"ditscale=={version('ditscale')}"
    except Exception:  # noqa: BLE001 - not installed as a package either
        return "unknown"


# ------------------------------------------------------------------------------------- ray data stages


def _read_and_decode(
    batch: dict[str, np.ndarray],
    source: SourceConfig,
    classes: list[str] | None,
    image_size: int,
    require_captions: bool,
    require_labels: bool,
    chunk_rows: int,
    filesystem: Any = None,
):
    """Ray task: one shard descriptor -> decoded chunks (uint8 crops + metadata + error), yielded one by one."""
    from pipelines.precompute.encode import decode_batch
    from pipelines.sources import _rows, iter_shard_chunks

    for d in batch["desc"]:
        desc = json.loads(d)
        if desc["kind"] == "null":
            # The empty prompt rides through the encoder actors as one extra row, so the null text embedding costs
            # no separate model load; the sink writes it and never counts it.
            rows = _rows(desc, [{"id": NULL_ID, "source": "null-text", "caption": ""}])
            rows["image"] = np.zeros((1, image_size, image_size, 3), np.uint8)
            yield decode_batch(rows, image_size, require_captions, require_labels)
            continue
        for chunk in iter_shard_chunks(desc, source, classes, filesystem, chunk_rows):
            if len(chunk["id"]):
                yield decode_batch(chunk, image_size, require_captions, require_labels)


def read_dataset(cfg: PrecomputeConfig, plan: SourcePlan, shards: list[dict]):
    """Ray Dataset of decoded rows (uint8 crops + id/shard/order/caption/label/error) of `shards`: the CPU stage."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    items = [{"desc": json.dumps(s)} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))  # one block per shard
    return ds.map_batches(
        _read_and_decode,
        batch_size=1,
        num_cpus=cfg.compute.decode_cpus,
        fn_kwargs={
            "source": cfg.source,
            "classes": plan.classes,
            "image_size": cfg.image_size,
            "require_captions": cfg.text is not None,
            "require_labels": cfg.text is None and plan.has_labels,
            "chunk_rows": cfg.compute.chunk_rows,
            # The driver's filesystem (S3 endpoint + credentials) travels with the tasks.
            "filesystem": storage.get_fs(cfg.source.path)[0] if cfg.source.path else None,
        },
    )


def build_dataset(cfg: PrecomputeConfig, plan: SourcePlan, shards: list[dict]):
    """The streaming pipeline over `shards`: read+decode tasks, then the encoder actor pool.

    Ray Data fuses the read stage into the actors when their resources match (CPU-only runs), so each actor decodes
    its own rows; with GPU actors the stages stay apart and decoding scales over the CPUs.
    """
    import ray

    from pipelines.precompute.encode import Encoder, default_num_threads

    c = cfg.compute
    # batch_size=None: one call per block (one chunk of one shard); the Encoder cuts it into model batches itself.
    return read_dataset(cfg, plan, shards).map_batches(
        Encoder,
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=c.actors),
        num_cpus=c.cpus_per_actor,
        num_gpus=c.gpus_per_actor,
        fn_constructor_kwargs={
            "vae": to_dict(cfg.vae) if cfg.vae is not None else None,  # None: pixel space
            "text": to_dict(cfg.text) if cfg.text is not None else None,
            "feature_net": cfg.fid.feature_net if cfg.fid is not None else None,
            "image_size": cfg.image_size,
            "device": c.device if c.gpus_per_actor > 0 or c.device != "auto" else "cpu",
            "dtype": c.dtype,
            "num_threads": default_num_threads(c.cpus_per_actor),
            "batch_size": c.batch_size,
        },
    )


# ------------------------------------------------------------------------------------------------ run


def _text_identity(cfg: PrecomputeConfig) -> dict | None:
    """Text encoder record for the manifest (dims read from the stored null embedding: no model loads here)."""
    if cfg.text is None:
        return None
    from safetensors.numpy import load as st_load

    from pipelines.encoders.text import DEFAULT_MAX_LENGTH, MINILM

    null = st_load(storage.read_bytes(storage.join(cfg.output, NULL_TEXT_FILE)))
    if isinstance(cfg.text, list):
        from pipelines.precompute.finalize import multi_text_identity

        return multi_text_identity(cfg.text, null)
    spec = resolve_spec(cfg.text)
    rec = {
        "encoder": spec.encoder,
        "revision": spec.revision,
        "max_length": spec.max_length or (DEFAULT_MAX_LENGTH["minilm"] if spec.encoder == MINILM else None),
    }
    if spec.subfolder:
        rec["subfolder"] = spec.subfolder
    rec.update(
        max_length=int(null["text_emb"].shape[0]),
        dim=int(null["text_emb"].shape[1]),
        pooled_dim=int(null["text_pooled"].shape[0]),
    )
    return rec


def resume_conflict(cfg: PrecomputeConfig, plan: SourcePlan) -> str | None:
    """Why `cfg.output` holds work a run of this config must not resume, or None (nothing there, or the same run:
    the fingerprint of its source, encoders and dtype matches, which another ditscale version may compute apart)."""
    out = cfg.output
    plan_uri = storage.join(out, PROGRESS_DIR, "plan.json")
    if storage.exists(plan_uri):
        old, fp = storage.read_json(plan_uri).get("fingerprint"), fingerprint(cfg, plan)
        if old == fp:
            return None
        return f"output {out} holds a run with a different source/encoder config (fingerprint {old} != {fp})"
    held = [n for n in ("manifest.json", "data") if storage.exists(storage.join(out, n))]
    if held:
        # Rows of an unknown run would be read beside the new ones (every reader lists data/).
        return (
            f"output {out} already holds {' and '.join(held)} but no {PROGRESS_DIR}/plan.json, so the run that "
            "wrote them cannot be checked"
        )
    return None


def _prepare_output(cfg: PrecomputeConfig, plan: SourcePlan) -> None:
    """Overwrite, or check that a resumed output holds a run of the same config (fingerprint)."""
    out = cfg.output
    if cfg.overwrite and storage.exists(out):
        check_replaceable(out)  # validate() did; the directory may have changed since
        storage.delete(out)
    why = resume_conflict(cfg, plan)
    if why is not None:
        raise ConfigError(f"{why}; use a new output path or overwrite=true")
    plan_uri = storage.join(out, PROGRESS_DIR, "plan.json")
    if not storage.exists(plan_uri):
        fp = fingerprint(cfg, plan)
        storage.write_json(plan_uri, {"fingerprint": fp, "shards": len(plan.shards), "config": to_dict(cfg)})


def _run_pending(cfg: PrecomputeConfig, plan: SourcePlan) -> tuple[dict[int, list[dict]], dict[str, Any]]:
    """Encode and write every shard not yet complete; (markers by shard, run statistics)."""
    markers = read_markers(cfg.output)
    done = {s["shard"] for s in plan.shards if is_complete(markers.get(s["shard"], []))}
    todo = [s for s in plan.shards if s["shard"] not in done]
    for s in todo:  # parts of an interrupted run: cleared, the shard is done again as a whole
        markers.pop(s["shard"], None)
    clear_shards(cfg.output, [s["shard"] for s in todo])
    need_null = cfg.text is not None and not storage.exists(storage.join(cfg.output, NULL_TEXT_FILE))
    work = ([{"shard": NULL_SHARD, "kind": "null"}] if need_null else []) + todo
    stats = {"shards_skipped": len(done), "rows_this_run": 0, "run_seconds": 0.0}
    if work:
        sink = PartSink(cfg.output, plan.has_labels, cfg.fid is not None)
        t0 = time.monotonic()
        build_dataset(cfg, plan, work).write_datasink(sink)
        stats["run_seconds"] = time.monotonic() - t0
        for m in sink.markers:
            markers.setdefault(int(m["shard"]), []).append(m)
        stats["rows_this_run"] = sum(m["rows"] for m in sink.markers)
    for s in todo:  # shards that produced no rows at all (e.g. an empty tar) are complete too
        if not markers.get(s["shard"]):
            markers[s["shard"]] = [mark_empty(cfg.output, s["shard"])]
    return {s: sorted(p, key=lambda m: m["first"]) for s, p in markers.items()}, stats


def run_precompute(cfg: PrecomputeConfig) -> dict:
    """Run (or resume) a precompute job; the summary (counts, rows/s, output, manifest)."""
    from pipelines.infra.ray_runtime import init_ray

    t0 = time.monotonic()
    plan, vae = validate(cfg)  # before anything is written or deleted
    _prepare_output(cfg, plan)
    started = init_ray(cfg.compute.ray_address, num_cpus=cfg.compute.num_cpus)
    try:
        markers, stats = _run_pending(cfg, plan)
        manifest: Manifest = finalize(cfg, plan, vae, markers, _text_identity(cfg), code_version())
    finally:
        if started:
            import ray

            ray.shutdown()
    rows, run_s = stats["rows_this_run"], stats["run_seconds"]
    return {
        "output": cfg.output,
        **to_dict(manifest.counts),
        "shards": len(plan.shards),
        **stats,
        "run_seconds": round(run_s, 3),
        "total_seconds": round(time.monotonic() - t0, 3),
        "rows_per_s": round(rows / run_s, 2) if run_s > 0 and rows else 0.0,
        "manifest": storage.join(cfg.output, "manifest.json"),
        "duplicate_id_examples": manifest.source.get("duplicate_id_examples", []),
        "skipped_inputs": plan.description.get("skipped_inputs"),
    }


def summary_warnings(s: dict) -> list[str]:
    """What a finished run wrote but should be looked at: repeated ids, and inputs left out for their names."""
    out = []
    if s.get("duplicate_ids"):
        out.append(
            f"{s['duplicate_ids']} written rows repeat the id of an earlier row (e.g. {s['duplicate_id_examples']}); "
            "training holds out validation rows by id, so give every input a unique id (source.id_column)"
        )
    skipped = s.get("skipped_inputs")
    if skipped:
        out.append(
            f"{skipped['count']} inputs were left out because a part of their path starts with '.' or '_' "
            f"(hidden files, Spark/Hadoop markers), e.g. {skipped['examples']}; rename them to include them"
        )
    return out


def format_summary(s: dict) -> str:
    """The one-line summary printed at the end of a run."""
    return (
        f"precompute: {s['input']} input = {s['written']} written + {s['failed']} failed; "
        f"{s['rows_this_run']} rows this run in {s['run_seconds']:.1f}s ({s['rows_per_s']:.1f} rows/s); "
        f"{s['shards_skipped']}/{s['shards']} shards already done -> {s['output']}"
    )
