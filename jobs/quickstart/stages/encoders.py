"""Quickstart stages 1-3: the offline encoders (a small VAE, the FID feature net; shipped or trained here, see
jobs/quickstart/shipped.py) and the precompute."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.quickstart import shipped
from jobs.quickstart.runner import Context, config_hash, record_upstream, recorded_upstream, upstream_fingerprint
from pipelines.infra.config_files import REPO_ROOT, load_config
from pipelines.infra.ray_runtime import head_cpus, num_cores

if TYPE_CHECKING:
    from pipelines.precompute.config import PrecomputeConfig

PRECOMPUTE_YAML = REPO_ROOT / "configs" / "precompute" / "builtin.yaml"


def _threads() -> int:
    """torch threads for the in-process trainers: every core of the machine (they run alone)."""
    return max(1, num_cores())


def _vae_overrides(ctx: Context) -> dict:
    """TrainVAEConfig overrides of this mode (real data: trained on its train split)."""
    cfg = {"out": str(ctx.path("vae")), "image_size": ctx.mode.image_size, **ctx.mode.vae}
    if ctx.mode.data is not None:
        from jobs.quickstart.stages.realdata import source_dict

        cfg["source"] = source_dict(ctx, "train", limit=ctx.mode.data.limit)
    return cfg


def _features_overrides(ctx: Context) -> dict:
    """TrainFeaturesConfig overrides of this mode."""
    return {"out": str(ctx.path("features")), "image_size": ctx.mode.image_size, **ctx.mode.features}


def _resolved(kind: str, overrides: dict):
    from pipelines.encoders.train_features import TrainFeaturesConfig
    from pipelines.encoders.train_vae import TrainVAEConfig

    cls = TrainVAEConfig if kind == "vae" else TrainFeaturesConfig
    return load_config(cls, base={**overrides, "threads": _threads()})


def _train(kind: str, cfg) -> str:
    if kind == "vae":
        from pipelines.encoders.train_vae import train_vae

        return str(train_vae(cfg))
    from pipelines.encoders.train_features import train_feature_net

    return str(train_feature_net(cfg))


def _shipping(ctx: Context, kind: str) -> dict:
    """What the stage hash adds for the shipped encoders: whether this run may use them, their sha256, and the code
    that trains them (an edit of it makes the shipped weights stale: the stage runs again and trains its own)."""
    if ctx.mode.data is not None:
        return {}
    entry = shipped.read_manifest(ctx.shipped_dir).get(kind) or {}
    return {
        "train_in_run": ctx.train_encoders,
        "shipped": (entry.get("files") or {}).get(shipped.weights_file(kind)),
        "code": shipped.code_fingerprint(kind),
    }


_NAMES = {"vae": "VAE", "features": "feature net"}


def _encoder(ctx: Context, kind: str, overrides: dict) -> dict:
    """The shipped encoder when it was trained exactly as this run would train it (and --train-encoders is not
    given), else train it here; the result says which, with the weights' sha256."""
    cfg = _resolved(kind, overrides)
    entry, why = shipped.match(kind, cfg, ctx.shipped_dir) if ctx.mode.data is None else (None, "")
    name = _NAMES[kind]
    if entry is not None and not ctx.train_encoders:
        rec = shipped.install(kind, entry, ctx.path(kind), ctx.shipped_dir)
        ctx.log(
            f"the shipped {name} ({ctx.shipped_dir / kind}, sha256 {rec['sha256'][:12]}) was trained with this "
            "run's config, data and code: using it (--train-encoders trains it here)"
        )
        return rec
    if ctx.mode.data is None:
        ctx.log(f"training the {name} in this run: " + ("--train-encoders" if entry is not None else why))
    rec = shipped.describe(kind, entry, "trained", Path(_train(kind, cfg)))
    if entry is not None:
        same = "the same as" if rec["sha256"] == rec["shipped_sha256"] else "different from"
        ctx.log(f"its weights (sha256 {rec['sha256'][:12]}) are {same} the shipped ones")
    return rec


def vae_config(ctx: Context) -> dict:
    """The VAE stage's hashed config: TrainVAEConfig overrides, and whether/which shipped weights may be used."""
    return {**_vae_overrides(ctx), **_shipping(ctx, "vae")}


def vae_run(ctx: Context) -> dict:
    """The small AutoencoderKL of the run's data: shipped (built-in shapes), or trained here."""
    return _encoder(ctx, "vae", _vae_overrides(ctx))


def features_config(ctx: Context) -> dict:
    """The feature net stage's hashed config: TrainFeaturesConfig overrides, and the shipped weights' use."""
    return {**_features_overrides(ctx), **_shipping(ctx, "features")}


def features_run(ctx: Context) -> dict:
    """The FID feature / attribute network: shipped, or trained here."""
    return _encoder(ctx, "features", _features_overrides(ctx))


def ship_encoders(dest: Path = shipped.SHIPPED_DIR, tiny: bool = False) -> dict:
    """Train the built-in VAE and feature net exactly as the (full or tiny) quickstart would, into `dest`, and write
    their manifest; returns it. `make encoders` runs this for the shipped files."""
    import os
    import time

    from jobs.quickstart.modes import make_mode
    from pipelines.infra.code import environment

    ctx = Context(Path(dest), make_mode(tiny), time.monotonic())
    dest = Path(dest)
    for kind, overrides in (("vae", _vae_overrides(ctx)), ("features", _features_overrides(ctx))):
        out = dest / kind
        # A path relative to the working directory where it lies below it (it is recorded in the saved configs).
        rel = os.path.relpath(out) if out.resolve().is_relative_to(Path.cwd()) else str(out)
        cfg = _resolved(kind, {**overrides, "out": rel})
        t = time.monotonic()
        _train(kind, cfg)
        trained_with = {
            "threads": cfg.threads,
            **environment(),  # python, torch, numpy, ray, cpu, cpus, gpu
            "seconds": round(time.monotonic() - t, 1),
            "command": "make encoders" if not tiny else "ditscale quickstart --ship-encoders --tiny",
        }
        entry = shipped.write_entry(kind, cfg, out, trained_with, dest)
        print(f"shipped {kind}: {out} (sha256 {entry['files'][shipped.weights_file(kind)][:12]})", flush=True)
    return shipped.read_manifest(dest)


def _encoder_actors() -> list[str]:
    """One encoder actor per CPU of the quickstart's Ray head (the YAMLs' 1 is for a laptop shared with other work).

    Each actor decodes and encodes its own shards with one torch thread; the rows written are the same for any
    number of actors (measured on the built-in 4096 rows: every shard and the FID statistics equal; 46.8 s with
    one actor against 34.3 s with two on 2 cores)."""
    return [f"compute.actors={head_cpus()}"]


def _precompute_overrides(ctx: Context) -> list[str]:
    if ctx.mode.data is not None:
        return _real_overrides(ctx)
    return [
        f"output={ctx.path('latents')}",
        f"image_size={ctx.mode.image_size}",
        f"vae.path={ctx.results['vae']['path']}",
        f"fid.feature_net={ctx.results['features']['path']}",
        "text.encoder=minilm",
        "source.kind=builtin",
        *_encoder_actors(),
        *ctx.mode.precompute,
    ]


def _real_overrides(ctx: Context) -> list[str]:
    """A real data set: its source, the VAE trained on it, the classifier as the per-point feature net."""
    import json

    from jobs.quickstart.stages.realdata import source_dict

    src = source_dict(ctx, "train", limit=ctx.mode.data.limit)
    return [
        f"output={ctx.path('latents')}",
        f"image_size={ctx.mode.image_size}",
        f"vae.path={ctx.results['vae']['path']}",
        f"fid.feature_net={ctx.results['classifier']['path']}",
        f"source={json.dumps(src)}",
        *_encoder_actors(),
        *ctx.mode.precompute,
    ]


def _precompute_yaml(ctx: Context):
    return REPO_ROOT / ctx.mode.precompute_yaml


def precompute_config(ctx: Context) -> dict:
    """The precompute YAML and this run's overrides."""
    return {"yaml": _precompute_yaml(ctx).read_text(), "overrides": _precompute_overrides(ctx)}


LATENTS_RECORD = "latents.upstream.json"  # beside latents/: what the data set in progress is made from


def latents_upstream(ctx: Context) -> str:
    """The precompute's config and the stages before it (their hashes and when their outputs were made)."""
    return config_hash({"config": precompute_config(ctx), "upstream": upstream_fingerprint(ctx)})


def clear_latents(ctx: Context, upstream: str, cfg: PrecomputeConfig) -> str | None:
    """Why latents/ must go before this precompute, or None to resume it: an interrupted precompute of the same
    encoders and config keeps its finished parts (the job resumes them; it re-encoded everything before). Another
    config, encoders retrained at the same paths, a folder with no record, rows the precompute `cfg` (this
    version's) would not resume (another version's fingerprint), or --force: cleared."""
    if not ctx.path("latents").exists():
        return None
    if ctx.force:
        return "--force reruns every stage"
    was = recorded_upstream(ctx.path(LATENTS_RECORD))
    if was is None:
        return "it has no record of the encoders and config it was made with"
    if was != upstream:
        return "it was made with other encoders or another config"
    from pipelines.precompute.job import resume_conflict
    from pipelines.precompute.plan import PROGRESS_DIR
    from pipelines.sources import SourceError, plan_source

    try:
        plan = plan_source(cfg.source, cfg.image_size)
    except SourceError:
        return None  # the precompute names the source's error
    try:
        conflict = resume_conflict(cfg, plan)
    except (OSError, ValueError, AttributeError) as exc:  # a _progress/plan.json that is not a JSON object
        return f"its {PROGRESS_DIR}/plan.json cannot be read ({exc})"
    return None if conflict is None else f"this version's precompute cannot resume it: {conflict}"


def precompute_run(ctx: Context) -> dict:
    """Encode the built-in images and captions into a latent data set on the quickstart's Ray."""
    from pipelines.precompute.job import PrecomputeConfig, format_summary, run_precompute

    out = ctx.path("latents")
    upstream = latents_upstream(ctx)
    cfg = load_config(PrecomputeConfig, _precompute_yaml(ctx), _precompute_overrides(ctx))
    why = clear_latents(ctx, upstream, cfg)
    if why is not None:
        ctx.log(f"clearing {out}: {why}")
        shutil.rmtree(out)
    elif out.exists():
        ctx.log(f"resuming the precompute in {out}: its finished parts are kept (same encoders and config)")
    record_upstream(ctx.path(LATENTS_RECORD), upstream)
    ctx.ensure_ray()
    summary = run_precompute(cfg)
    ctx.log(format_summary(summary))
    return {"path": str(out), "manifest": str(out / "manifest.json"), "summary": summary}
