"""`ditscale evaluate`: FID (and caption-attribute accuracy) of a checkpoint, sampled on Ray actors.

N samples are drawn with a named sampler from the checkpoint's EMA weights; sample i uses noise and a
generator seeded by (seed, i) and the conditioning of dataset row i (its class label or its text embedding),
so the result does not depend on how samples are split over actors. Latents are decoded through the data
set's VAE, featurised by the data set's feature net, and compared with the data set's reference statistics
by ditcore.metrics.fid.frechet_distance. For text models on the built-in data, the feature net's attribute
heads also score whether the objects of each caption are visible (caption-attribute accuracy).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any, Optional, Sequence

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import torch

from pipelines.infra import storage
SAMPLE_SEED_STRIDE = 1_000_003  # (seed, index) -> one sample seed; large prime stride avoids overlaps


def _sample_seed(seed: int, index: int) -> int:
    return int(seed) * SAMPLE_SEED_STRIDE + int(index)


def _conditions(manifest_uri: str, manifest: dict, arch: str, num_samples: int, num_classes: int) -> dict[str, np.ndarray]:
    """Per-sample conditioning (row i % n of the data set for text; label i % classes for class models)."""
    if arch == "dit":
        return {"y": (np.arange(num_samples) % int(manifest.get("num_classes") or num_classes)).astype(np.int64)}
    from pipelines.latents.reader import load_latents_numpy

    rows = load_latents_numpy(manifest_uri, limit=num_samples, columns=["id", "text_emb", "text_mask", "text_pooled"])
    n = len(rows["id"])
    if n == 0:
        raise ValueError(f"{manifest_uri}: empty data set, no captions to condition on")
    idx = np.arange(num_samples) % n
    return {"text_emb": rows["text_emb"][idx].astype(np.float32), "text_mask": rows["text_mask"][idx].astype(bool),
            "text_pooled": rows["text_pooled"][idx].astype(np.float32), "id": rows["id"][idx]}


@functools.lru_cache(maxsize=4)
def _vae(path: str):
    """The data set's VAE, loaded once per process (evaluation of many checkpoints against one data set)."""
    from pipelines.encoders.vae import load_vae

    return load_vae(path)


@functools.lru_cache(maxsize=4)
def _feature_net(uri: str):
    """The data set's feature network, loaded once per process."""
    from ditcore.metrics.features import load_feature_net

    return load_feature_net(storage.local_copy(uri))


def preload(manifest_uri: str) -> None:
    """Load the data set's VAE and feature net (and their libraries) into this process ahead of evaluate_checkpoint."""
    from pipelines.latents.reader import read_manifest

    manifest = read_manifest(manifest_uri)
    if (manifest.get("vae") or {}).get("path"):
        _vae(str(manifest["vae"]["path"]))
    if (manifest.get("fid") or {}).get("feature_net"):
        _feature_net(str(manifest["fid"]["feature_net"]))


def generate_features(ckpt_dir: str, manifest_uri: str, indices: Sequence[int], cond: dict[str, np.ndarray], *,
                      sampler: str, steps: int, guidance: float, seed: int, batch_size: int = 64,
                      want_images: bool = False) -> dict[str, np.ndarray]:
    """Sample `indices` from a checkpoint, decode, featurise: {"features" [n,F], ("images" uint8 [n,H,W,3])}."""
    from ditcore.checkpoint import load_checkpoint
    from ditcore.samplers import make_generators, model_fn_from_model, noise_from_seeds, sample
    from pipelines.latents.reader import load_null_text, read_manifest
    from pipelines.encoders.vae import decode_to_images

    torch.set_num_threads(max(1, int(os.environ.get("DITSCALE_EVAL_THREADS", "1"))))
    local = storage.local_copy(ckpt_dir)
    ck = load_checkpoint(local, use_ema=True)
    model = ck.model.eval()
    objective = ck.config.get("objective") or {}
    process, prediction = objective.get("process", "flow"), objective.get("prediction", "velocity")
    manifest = read_manifest(manifest_uri)
    vae_cfg = manifest.get("vae") or {}
    if not vae_cfg.get("path"):
        raise ValueError(f"{manifest_uri}: manifest vae.path is empty; cannot decode samples")
    vae = _vae(str(vae_cfg["path"]))
    net = _feature_net(str((manifest.get("fid") or {})["feature_net"]))
    C, S = model.in_channels, model.config.input_size
    uncond = None
    if guidance != 1.0:
        if tuple(model.cond_keys) == ("y",):
            uncond = {"y": torch.tensor(model.config.num_classes)}
        else:
            nt = load_null_text(manifest_uri)
            uncond = {k: (v.float() if v.is_floating_point() else v) for k, v in nt.items()}
    fn = model_fn_from_model(model)
    feats, imgs = [], []
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        seeds = [_sample_seed(seed, i) for i in chunk]
        noise = noise_from_seeds(seeds, (C, S, S))  # [b,C,S,S]
        pos = np.arange(start, start + len(chunk))
        c = {k: torch.from_numpy(np.ascontiguousarray(v[pos])) for k, v in cond.items() if k != "id"}
        z = sample(fn, noise, process=process, prediction=prediction, sampler=sampler, steps=steps, cond=c,
                   uncond=uncond, guidance=guidance, generators=make_generators(seeds))  # [b,C,S,S] model space
        images = decode_to_images(vae, z, float(vae_cfg.get("scaling_factor") or 1.0),
                                  float(vae_cfg.get("shift_factor") or 0.0))  # uint8 [b,H,W,3]
        with torch.no_grad():
            feats.append(net.features(images).double().cpu().numpy())
        if want_images:
            imgs.append(images)
    out = {"features": np.concatenate(feats)}
    if want_images:
        out["images"] = np.concatenate(imgs)
    return out


def _builtin_objects(manifest: dict, ids: np.ndarray) -> Optional[list]:
    """The ground-truth objects of built-in rows (ids "builtin-<seed>-<index>"), None for other data."""
    src = manifest.get("source") or {}
    if src.get("kind") != "builtin":
        return None
    from ditcore.data.builtin import BuiltinSpec, sample_objects

    spec = BuiltinSpec(image_size=int(src["image_size"]), max_objects=int(src["max_objects"]), seed=int(src["seed"]))
    return [sample_objects(int(str(i).rsplit("-", 1)[-1]), spec) for i in ids]


def evaluate_checkpoint(ckpt: str, manifest_uri: str, num_samples: int = 256, sampler: str = "euler", steps: int = 20,
                        guidance: float = 1.0, seed: int = 0, num_actors: int = 1,
                        cpus_per_actor: float = 1.0) -> dict[str, Any]:
    """FID of `ckpt` (EMA weights) vs the data set's reference stats; + "attr_acc" for text models on built-in data."""
    from ditcore.checkpoint import read_checkpoint_config
    from ditcore.metrics.fid import feature_stats, frechet_distance
    from ditcore.samplers import SAMPLERS
    from pipelines.latents.reader import load_fid_stats, read_manifest

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown {sampler!r}; known: {', '.join(SAMPLERS)}")
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a covariance, got {num_samples}")
    manifest = read_manifest(manifest_uri)
    if not (manifest.get("fid") or {}).get("feature_net"):
        raise ValueError(f"{manifest_uri}: the data set records no FID feature net (manifest fid.feature_net)")
    mu_ref, sigma_ref = load_fid_stats(manifest_uri)
    local = storage.local_copy(ckpt)
    model_cfg = read_checkpoint_config(local)["model"]
    cond = _conditions(manifest_uri, manifest, model_cfg["arch"], num_samples, int(model_cfg.get("num_classes", 0) or 0))
    objects = _builtin_objects(manifest, cond["id"]) if "id" in cond else None
    want_images = objects is not None
    kw = dict(sampler=sampler, steps=steps, guidance=guidance, seed=seed, want_images=want_images)
    if num_actors < 0:
        raise ValueError(f"num_actors must be >= 0 (0 samples in this process), got {num_actors}")
    in_process = num_actors == 0  # no actor start-up: worth it for tiny models (the quickstart's --tiny mode)
    num_actors = max(1, min(num_actors, num_samples))
    parts_idx = [list(range(num_samples))[a::num_actors] for a in range(num_actors)]
    if in_process or (num_actors == 1 and not _ray_running()):
        parts = [generate_features(local, manifest_uri, parts_idx[0], cond, **kw)]
    else:
        import ray

        @ray.remote(num_cpus=cpus_per_actor)
        class SampleActor:
            """Holds nothing between calls; one actor per slice of sample indices."""

            def run(self, ck, uri, idx, c, kwargs):
                sub = {k: v[idx] for k, v in c.items()}
                return generate_features(ck, uri, idx, sub, **kwargs)

        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # Outside any enclosing placement group (a Tune trial's holds only the trial driver's fractional CPU).
        free = PlacementGroupSchedulingStrategy(placement_group=None)
        actors = [SampleActor.options(scheduling_strategy=free).remote() for _ in range(num_actors)]
        parts = ray.get([a.run.remote(ckpt, manifest_uri, idx, cond, kw) for a, idx in zip(actors, parts_idx)])
        for a in actors:
            ray.kill(a)
    # Reassemble in index order (the statistics do not depend on order; attribute matching does).
    order = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts_idx])
    feats = np.empty((num_samples, parts[0]["features"].shape[1]))
    feats[order] = np.concatenate([p["features"] for p in parts])
    images = None
    if want_images:
        images = np.empty((num_samples, *parts[0]["images"].shape[1:]), np.uint8)
        images[order] = np.concatenate([p["images"] for p in parts])
    mu, sigma = feature_stats(feats)
    out: dict[str, Any] = {"fid": float(frechet_distance(mu, sigma, mu_ref, sigma_ref)), "num_samples": num_samples,
                           "sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed}
    if objects is not None and images is not None:
        from ditcore.metrics.features import caption_attribute_accuracy

        net = _feature_net(str(manifest["fid"]["feature_net"]))
        if hasattr(net, "attributes"):
            out["attr_acc"] = float(caption_attribute_accuracy(net, images, objects))
    return out


def _ray_running() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:  # pragma: no cover
        return False


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale evaluate`."""
    p = argparse.ArgumentParser(prog="ditscale evaluate", description="FID (and attribute accuracy) of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory (local or s3://), e.g. runs/<run>/checkpoints/step_00000100")
    p.add_argument("--data", required=False, help="latent dataset (default: the checkpoint's data.manifest)")
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-actors", type=int, default=1,
                   help="Ray actors that sample in parallel (0: sample in this process, no Ray)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from ditcore.checkpoint import CheckpointError, read_checkpoint_config

    try:
        data = args.data or read_checkpoint_config(storage.local_copy(args.checkpoint)).get("data", {}).get("manifest")
        if not data:
            print("ditscale evaluate: --data is required (the checkpoint records no data.manifest)", file=sys.stderr)
            return 2
        if args.num_actors > 1:
            import ray

            ray.init()
        out = evaluate_checkpoint(args.checkpoint, data, num_samples=args.num_samples, sampler=args.sampler,
                                  steps=args.steps, guidance=args.guidance, seed=args.seed, num_actors=args.num_actors)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"ditscale evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
