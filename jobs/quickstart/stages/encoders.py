"""Quickstart stages 1-3: the offline encoders (a small VAE, the FID feature net) and the precompute."""

from __future__ import annotations

import shutil

from jobs.quickstart.runner import Context
from pipelines.infra.config_files import REPO_ROOT, load_config
from pipelines.infra.ray_runtime import head_cpus, num_cores

PRECOMPUTE_YAML = REPO_ROOT / "configs" / "precompute" / "builtin.yaml"


def _threads() -> int:
    """torch threads for the in-process trainers: every core of the machine (they run alone)."""
    return max(1, num_cores())


def vae_config(ctx: Context) -> dict:
    """TrainVAEConfig overrides of this mode (real data: trained on its train split)."""
    cfg = {"out": str(ctx.path("vae")), "image_size": ctx.mode.image_size, **ctx.mode.vae}
    if ctx.mode.data is not None:
        from jobs.quickstart.stages.realdata import source_dict

        cfg["source"] = source_dict(ctx, "train", limit=ctx.mode.data.limit)
    return cfg


def vae_run(ctx: Context) -> dict:
    """Train the small AutoencoderKL on the run's data (the built-in shapes, or the real train split)."""
    from pipelines.encoders.train_vae import TrainVAEConfig, train_vae

    return {"path": str(train_vae(load_config(TrainVAEConfig, base={**vae_config(ctx), "threads": _threads()})))}


def features_config(ctx: Context) -> dict:
    """TrainFeaturesConfig overrides of this mode."""
    return {"out": str(ctx.path("features")), "image_size": ctx.mode.image_size, **ctx.mode.features}


def features_run(ctx: Context) -> dict:
    """Train the FID feature / attribute network."""
    from pipelines.encoders.train_features import TrainFeaturesConfig, train_feature_net

    cfg = load_config(TrainFeaturesConfig, base={**features_config(ctx), "threads": _threads()})
    return {"path": str(train_feature_net(cfg))}


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


def precompute_run(ctx: Context) -> dict:
    """Encode the built-in images and captions into a latent data set on the quickstart's Ray."""
    from pipelines.precompute.job import PrecomputeConfig, format_summary, run_precompute

    out = ctx.path("latents")
    if out.exists():
        shutil.rmtree(out)  # a stale or different data set: this stage's marker did not match
    cfg = load_config(PrecomputeConfig, _precompute_yaml(ctx), _precompute_overrides(ctx))
    ctx.ensure_ray()
    summary = run_precompute(cfg)
    ctx.log(format_summary(summary))
    return {"path": str(out), "manifest": str(out / "manifest.json"), "summary": summary}
