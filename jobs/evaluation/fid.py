"""FID (and caption-attribute accuracy) of a checkpoint, sampled through the generation pipeline on Ray actors.

N samples are drawn from the checkpoint's EMA weights by pipelines.generation with the requested sampler
settings; sample i has seed `eval_seed * 1_000_003 + i` and the conditioning of data set row i (its text
embedding) or class label i mod num_classes, so the result does not depend on how samples are split over
actors. Images are featurised by the data set's feature network and compared with its reference statistics
(ditcore.metrics.fid.frechet_distance). For text models on the built-in data, the feature net's attribute heads
also score whether the objects each caption names are visible (caption-attribute accuracy).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ditcore.metrics.fid import FID_SE_METHOD
from pipelines.infra import storage
from pipelines.latents.manifest import Manifest

SAMPLE_SEED_STRIDE = 1_000_003  # (eval seed, index) -> one sample seed; a large prime stride avoids overlaps


def sample_seed(eval_seed: int, index: int) -> int:
    """Seed of evaluation sample `index` under evaluation seed `eval_seed`."""
    return int(eval_seed) * SAMPLE_SEED_STRIDE + int(index)


@dataclass(frozen=True)
class FIDSettings:
    """Every setting that changes an evaluation's result; `key()` names its cache entry."""

    num_samples: int = 256
    sampler: str = "euler"
    steps: int = 20
    guidance: float = 1.0
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming a bad setting."""
        from ditcore.samplers import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        if self.num_samples < 3:
            raise ValueError(
                f"num_samples must be >= 3 (a covariance, and the FID's bootstrap standard error), "
                f"got {self.num_samples}"
            )
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.seed <= 2**32 - 1:  # sample seeds seed * 1_000_003 + i stay inside int64
            raise ValueError(f"seed must be in [0, {2**32 - 1}], got {self.seed}")

    def key(self, feature_net: str = "", classifier: Optional[str] = None, compute: str = "cpu") -> str:
        """Short stable hash of these settings, the feature network (and the classifier scoring the samples) and
        where the samples are drawn (`sampling_compute`: a GPU samples in bf16, so its FID differs a little from a
        CPU's fp32 one; "cpu" adds nothing to the key). The key also names how the
        FID's standard error is resampled (`fid_se`: half-samples since they replaced a bootstrap that overstated
        it), so a cached result never carries the other method's."""
        extra = {"classifier": classifier} if classifier else {}
        extra["fid_se"] = FID_SE_METHOD  # ditcore.metrics.fid
        if compute != "cpu":
            extra["compute"] = compute
        blob = json.dumps({**asdict(self), "feature_net": feature_net, **extra}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def feature_net(uri: str) -> torch.nn.Module:
    """The data set's feature network, loaded once per process."""
    from ditcore.metrics.features import load_feature_net

    with storage.local_copy_scope(uri) as local:
        return load_feature_net(local).eval()


def check_model_fits_data(model_cfg: dict, conditioning: str, manifest: Manifest, manifest_uri: str) -> None:
    """ValueError naming the mismatch when the checkpoint's model cannot be scored against `manifest_uri` (another
    conditioning, or latents of another shape), before any sampling."""
    if conditioning == "text" and manifest.text is None:
        raise ValueError(f"a text-conditioned checkpoint, but {manifest_uri} has no text embeddings (a class data set)")
    if conditioning == "class" and manifest.text is not None and not manifest.num_classes:
        raise ValueError(f"a class-conditional checkpoint, but {manifest_uri} has captions, not class labels")
    classes = model_cfg.get("num_classes")
    if conditioning == "class" and classes and manifest.num_classes and manifest.num_classes > int(classes):
        # label num_classes is the model's null class (unconditional samples), larger labels are out of range
        raise ValueError(
            f"the checkpoint's model knows {classes} classes, but {manifest_uri} has {manifest.num_classes}"
        )
    if conditioning == "text" and manifest.text is not None:
        for key in ("dim", "pooled_dim"):
            have_dim, want_dim = getattr(manifest.text, key), model_cfg.get("text_dim" if key == "dim" else key)
            if have_dim and want_dim and int(have_dim) != int(want_dim):
                raise ValueError(
                    f"the checkpoint's model takes {key.replace('dim', 'width')} {want_dim} text embeddings, but "
                    f"{manifest_uri} holds {have_dim} ({manifest.text.encoder}): embedded by another text encoder"
                )
    v = manifest.vae
    want = (model_cfg.get("in_channels"), model_cfg.get("input_size"))
    have = (v.latent_channels, v.latent_size or (manifest.image_size // max(v.downsample, 1)))
    if None not in want and have[1] and tuple(want) != tuple(have):
        raise ValueError(
            f"the checkpoint's model takes {want[0]}x{want[1]}x{want[1]} inputs, but {manifest_uri} holds "
            f"{have[0]}x{have[1]}x{have[1]} latents"
        )


def sampling_compute(num_actors: int, num_gpus: Optional[float] = None) -> str:
    """Where evaluation samples ("cuda-bf16" or "cpu"), by the rule `_sample_parts` and `_pipeline` follow: in this
    process on its own device, or on actors with a GPU each when `num_gpus` (None: the cluster has GPUs) says so."""
    if num_actors == 0 or (num_actors == 1 and not _ray_running()):
        on_gpu = torch.cuda.is_available()
    elif num_gpus is None:
        import ray

        on_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    else:
        on_gpu = num_gpus > 0
    return "cuda-bf16" if on_gpu else "cpu"


@functools.lru_cache(maxsize=8)
def _pipeline(ckpt: str):
    from pipelines.generation import GenerationPipeline

    # One load per process (a Ray worker keeps it for the next part); on a GPU: bf16 autocast + TF32 (dtype auto).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return GenerationPipeline.from_checkpoint(ckpt, device=device, text_encoder=False)


def preload(manifest_uri: str) -> None:
    """Load the data set's VAE and feature net (and their libraries) into this process ahead of evaluation."""
    from pipelines.generation import cached_vae

    manifest = Manifest.read(manifest_uri)
    if manifest.vae.path:
        cached_vae(manifest.vae.path, "cpu", manifest.vae.revision, manifest.vae.subfolder)
    if manifest.fid is not None and manifest.fid.feature_net:
        feature_net(manifest.fid.feature_net)


def conditions(
    manifest_uri: str, manifest: Manifest, conditioning: str, num_samples: int, num_classes: int
) -> dict[str, np.ndarray]:
    """Per-sample conditioning: text of data set row i mod n (with its id), or class label i mod num_classes."""
    if conditioning == "class":
        return {"y": (np.arange(num_samples) % int(manifest.num_classes or num_classes)).astype(np.int64)}
    from pipelines.latents.reader import load_latents_numpy

    rows = load_latents_numpy(manifest_uri, limit=num_samples, columns=["id", "text_emb", "text_mask", "text_pooled"])
    n = len(rows.get("id", []))
    if n == 0:
        raise ValueError(f"{manifest_uri}: empty data set, no captions to condition on")
    idx = np.arange(num_samples) % n
    return {
        "text_emb": rows["text_emb"][idx].astype(np.float32),
        "text_mask": rows["text_mask"][idx].astype(bool),
        "text_pooled": rows["text_pooled"][idx].astype(np.float32),
        "id": rows["id"][idx],
    }


def eval_threads() -> int:
    """Torch threads of in-process sampling: DITSCALE_EVAL_THREADS, default 1 (one CPU share per trial)."""
    return max(1, int(os.environ.get("DITSCALE_EVAL_THREADS", "1")))


def generate_features(
    ckpt: str,
    manifest_uri: str,
    indices: Sequence[int],
    cond: dict[str, np.ndarray],
    settings: FIDSettings,
    *,
    batch_size: int = 64,
    want_images: bool = False,
    progress: bool = False,
    feature_net_uri: Optional[str] = None,
    threads: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """Sample `indices` (cond rows aligned with them), featurise with the data set's feature net (or
    `feature_net_uri`): {"features" [n,F], ("images" uint8 [n,H,W,3])}. `threads`: torch threads (default
    `eval_threads()`)."""
    from tqdm.auto import tqdm

    from pipelines.generation import SamplerSettings

    torch.set_num_threads(max(1, threads or eval_threads()))
    pipe = _pipeline(ckpt)  # one load (and, from s3://, one download) per process and checkpoint
    # The features of the data set the FID is scored against (`manifest_uri`, e.g. `evaluate --data`), which need
    # not be the one the checkpoint was trained on.
    manifest = Manifest.read(manifest_uri) if manifest_uri else pipe.manifest
    if feature_net_uri is None and (manifest is None or manifest.fid is None or not manifest.fid.feature_net):
        raise ValueError(f"{manifest_uri}: the data set records no FID feature net (manifest fid.feature_net)")
    net = feature_net(feature_net_uri or manifest.fid.feature_net)
    sampler = SamplerSettings(sampler=settings.sampler, steps=settings.steps, guidance=settings.guidance)
    feats, imgs = [], []
    indices = list(indices)
    bar = tqdm(total=len(indices), desc="FID samples", unit="img", disable=not progress)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        pos = np.arange(start, start + len(chunk))
        c = {k: torch.from_numpy(np.ascontiguousarray(v[pos])) for k, v in cond.items() if k != "id"}
        images = pipe.generate(c, [sample_seed(settings.seed, i) for i in chunk], sampler)  # uint8 [b,H,W,3]
        with torch.no_grad():
            feats.append(net.features(images).double().cpu().numpy())
        if want_images:
            imgs.append(images)
        bar.update(len(chunk))
    bar.close()
    out = {"features": np.concatenate(feats), "device": f"{pipe.device.type} {'bf16' if pipe.bf16 else 'fp32'}"}
    out["threads"] = torch.get_num_threads()
    if want_images:
        out["images"] = np.concatenate(imgs)
    return out


def _builtin_objects(manifest: Manifest, ids: np.ndarray) -> Optional[list]:
    """The ground-truth objects of built-in rows (ids "builtin-<seed>-<index>"), None for other data."""
    if not manifest.builtin_source:
        return None
    from ditcore.data.builtin import BuiltinSpec, sample_objects

    src = manifest.source
    spec = BuiltinSpec(image_size=int(src["image_size"]), max_objects=int(src["max_objects"]), seed=int(src["seed"]))
    return [sample_objects(int(str(i).rsplit("-", 1)[-1]), spec) for i in ids]


def _sample_parts(
    ckpt: str,
    manifest_uri: str,
    cond: dict,
    settings: FIDSettings,
    want_images: bool,
    num_actors: int,
    cpus_per_actor: float,
    progress: bool,
    num_gpus: Optional[float] = None,
    threads: Optional[int] = None,
) -> tuple[list[list[int]], list[dict]]:
    """(index slice per part, generate_features result per part), in this process (`threads` torch threads) or on
    Ray actors (one GPU each when the cluster has GPUs: `num_gpus` None picks 1 then, else 0)."""
    n = settings.num_samples
    in_process = num_actors == 0  # no actor start-up: worth it for tiny models
    num_actors = max(1, min(num_actors, n))
    parts_idx = [list(range(n))[a::num_actors] for a in range(num_actors)]
    if in_process or (num_actors == 1 and not _ray_running()):
        return parts_idx[:1], [
            generate_features(
                ckpt,
                manifest_uri,
                parts_idx[0],
                cond,
                settings,
                want_images=want_images,
                progress=progress,
                threads=threads,
            )
        ]
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0

    task_threads = max(1, int(cpus_per_actor))  # the CPUs each task holds, not eval_threads()'s in-process default

    @ray.remote(num_cpus=cpus_per_actor, num_gpus=num_gpus)
    def sample_part(ck, uri, idx, c, s, images):
        c = {k: v[idx] for k, v in c.items()}
        out = generate_features(ck, uri, idx, c, s, want_images=images, threads=task_threads)
        return {**out, "gpu_ids": list(ray.get_runtime_context().get_accelerator_ids().get("GPU", []))}

    # Outside any enclosing placement group (a Tune trial's holds only the trial driver's fractional CPU).
    free = PlacementGroupSchedulingStrategy(placement_group=None)
    refs = [
        sample_part.options(scheduling_strategy=free).remote(ckpt, manifest_uri, idx, cond, settings, want_images)
        for idx in parts_idx
    ]
    return parts_idx, ray.get(refs)


def evaluate_checkpoint(
    ckpt: str,
    manifest_uri: str,
    settings: FIDSettings | None = None,
    *,
    num_actors: int = 1,
    cpus_per_actor: float = 1.0,
    progress: bool = False,
    classifier: Optional[str] = None,
    n_boot: int = 50,
    num_gpus: Optional[float] = None,
    threads: Optional[int] = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """FID of `ckpt` (EMA weights) vs the data set's reference stats, with its sampling noise; + "attr_acc" for text
    models on built-in data; + "class_acc" when a `classifier` (ditcore.metrics.classifier net) is given.

    `settings` (or its fields as keywords: num_samples, sampler, steps, guidance, seed) fixes the samples. "fid_se"
    and "fid_ci" come from `n_boot` half-samples of the generated samples (ditcore.metrics.fid.fid_bootstrap);
    a FID from fewer samples than feature dimensions carries "few_samples_warning" (also printed). `threads`: torch
    threads when sampling in this process (num_actors 0; default `eval_threads()`). "sampling_device" says where
    the samples were drawn ("cuda bf16", "cpu fp32"), "sampling_gpus" how many Ray GPUs the sampling tasks held and
    "sampling_threads" the torch threads of each (a Ray task as many as the CPUs it holds, `cpus_per_actor`).
    """
    from ditcore.metrics.fid import feature_stats, frechet_distance
    from pipelines.latents.reader import load_fid_stats

    settings = settings or FIDSettings(**kwargs)
    settings.check()
    if num_actors < 0:
        raise ValueError(f"num_actors must be >= 0 (0 samples in this process), got {num_actors}")
    manifest = Manifest.read(manifest_uri)
    if manifest.fid is None or not manifest.fid.feature_net:
        raise ValueError(f"{manifest_uri}: the data set records no FID feature net (manifest fid.feature_net)")
    mu_ref, sigma_ref = load_fid_stats(manifest_uri)
    model_cfg = storage.checkpoint_config(ckpt)["model"]
    conditioning = "text" if model_cfg.get("text_dim") else "class"
    check_model_fits_data(model_cfg, conditioning, manifest, manifest_uri)
    cond = conditions(
        manifest_uri, manifest, conditioning, settings.num_samples, int(model_cfg.get("num_classes") or 0)
    )
    objects = _builtin_objects(manifest, cond["id"]) if "id" in cond else None
    labels = _class_labels(manifest_uri, cond, settings.num_samples) if classifier else None
    want_images = objects is not None or labels is not None
    parts_idx, parts = _sample_parts(
        ckpt, manifest_uri, cond, settings, want_images, num_actors, cpus_per_actor, progress, num_gpus, threads
    )
    order = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts_idx])  # reassemble in index order
    feats = np.empty((settings.num_samples, parts[0]["features"].shape[1]))
    feats[order] = np.concatenate([p["features"] for p in parts])
    mu, sigma = feature_stats(feats)
    out: dict[str, Any] = {
        "fid": float(frechet_distance(mu, sigma, mu_ref, sigma_ref)),
        **asdict(settings),
        "fid_network": manifest.fid.feature_net,
        "feature_dim": int(feats.shape[1]),
        **_noise(feats, mu_ref, sigma_ref, n_boot, settings.seed),
        "sampling_device": ", ".join(sorted({p["device"] for p in parts})),  # e.g. "cuda bf16" or "cpu fp32"
        "sampling_gpus": sum(len(p.get("gpu_ids", [])) for p in parts),  # Ray GPUs held by the sampling tasks
        "sampling_threads": max(int(p.get("threads", 1)) for p in parts),  # torch threads per sampling part
    }
    if want_images:
        images = np.empty((settings.num_samples, *parts[0]["images"].shape[1:]), np.uint8)
        images[order] = np.concatenate([p["images"] for p in parts])
        out.update(_accuracies(manifest, images, objects, labels, classifier))
    return out


def _noise(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """The FID's sampling noise (half-samples of the generated samples) and the few-samples warning."""
    import sys

    from ditcore.metrics.fid import few_samples_warning, fid_bootstrap

    warning = few_samples_warning(len(feats), feats.shape[1])
    if warning:
        print(f"[ditscale] WARNING: {warning}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"few_samples_warning": warning}
    if n_boot > 1:
        boot = fid_bootstrap(feats, mu_ref, sigma_ref, n_boot=n_boot, seed=seed)
        out.update(fid_se=float(boot["se"]), fid_ci=[float(v) for v in boot["ci"]], fid_n_boot=int(n_boot))
    return out


def _class_labels(manifest_uri: str, cond: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The class each sample should show: its class label, or the label of the data row whose caption it drew."""
    if "y" in cond:
        return np.asarray(cond["y"], dtype=np.int64)
    from pipelines.latents.reader import load_latents_numpy, read_manifest

    if "label" not in read_manifest(manifest_uri).columns:  # before reading: the reader would name no column
        raise ValueError(f"{manifest_uri}: class accuracy needs a label column in the data set (none recorded)")
    rows = load_latents_numpy(manifest_uri, limit=n, columns=["id", "label"])
    if "label" not in rows or len(rows["label"]) == 0:
        raise ValueError(f"{manifest_uri}: class accuracy needs a label column in the data set (none recorded)")
    by_id = dict(zip(rows["id"].astype(str), rows["label"].astype(np.int64)))
    return np.asarray([by_id[str(i)] for i in cond["id"]], dtype=np.int64)


def _accuracies(
    manifest: Manifest, images: np.ndarray, objects: Optional[list], labels: Optional[np.ndarray], classifier: Any
) -> dict[str, Any]:
    """Caption-attribute accuracy (built-in data's feature net) and class accuracy (a trained classifier)."""
    out: dict[str, Any] = {}
    if objects is not None:
        from ditcore.metrics.features import caption_attribute_accuracy

        net = feature_net(manifest.fid.feature_net)
        if hasattr(net, "attributes"):
            out["attr_acc"] = float(caption_attribute_accuracy(net, images, objects))
    if labels is not None:
        from ditcore.metrics.classifier import classification_accuracy

        res = classification_accuracy(feature_net(str(classifier)), images, labels)
        out.update(class_acc=float(res["accuracy"]), class_acc_per_class=res["per_class"], classifier=str(classifier))
    return out


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()
