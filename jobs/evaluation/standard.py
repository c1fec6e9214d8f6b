"""Standard FID of a checkpoint: the FID Inception network on real reference images, with the data's own floor.

The sweep scores every budget point with the data set's own feature net (cheap enough for every point on CPUs).
For a result others can compare, the champion is also scored with the FID Inception-v3 (`ditscale data inception`:
the TF "inception-2015-12-05" graph of pytorch-fid / clean-fid, 2048-d pool features) against reference statistics
of real train images, and the same network scores real test images at the same sample count (or all of them when
the test split is smaller: `floor.n_samples` says how many; FID's small-sample bias then raises the floor): the floor
a perfect generator would reach at that N. Both carry intervals from half-samples of the scored images.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from typing import Any, Optional

import numpy as np

from jobs.evaluation.fid import FIDSettings, conditions, feature_net, generate_features
from pipelines.latents.manifest import Manifest


def _features(uri: str, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    import torch

    net = feature_net(uri)
    with torch.no_grad():
        return np.concatenate(
            [net.features(images[i : i + batch_size]).double().numpy() for i in range(0, len(images), batch_size)]
        )


def reference_stats(
    inception: str, train_source: Any, image_size: int, n_ref: int, cache_dir: Optional[str] = None
) -> dict[str, Any]:
    """Mean and covariance of the network's features of the first `n_ref` train images (cached in `cache_dir`)."""
    from ditcore.metrics.fid import feature_stats
    from pipelines.datasets.images import load_readable_images
    from pipelines.infra.storage import tree_stamp

    # What the images are, not only where (a folder whose images were replaced is other data), and what the network
    # is (a reconverted Inception at the same path is another network: its statistics were reused).
    where = train_source if isinstance(train_source, str) else getattr(train_source, "path", None)
    stamp = tree_stamp(where) if where else None
    net = tree_stamp(inception)
    key = hashlib.sha1(json.dumps([inception, str(train_source), image_size, n_ref, stamp, net]).encode()).hexdigest()
    key = key[:12]
    path = os.path.join(cache_dir, f"ref-{key}.npz") if cache_dir else None
    if path and os.path.exists(path):
        try:
            with np.load(path) as z:
                return {"mu": z["mu"], "sigma": z["sigma"], "count": int(z["count"])}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # torn by a kill mid-write (written atomically since): computed again
    images = load_readable_images(train_source, image_size, n_ref)["image"]
    mu, sigma = feature_stats(_features(inception, images))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(f, mu=mu, sigma=sigma, count=len(images))
        os.replace(tmp, path)
    return {"mu": mu, "sigma": sigma, "count": len(images)}


def network_name(uri: str) -> str:
    """What network `uri` holds: the standard FID Inception, or which other feature net (stated, never assumed)."""
    from ditcore.metrics.inception import FIDInceptionV3

    net = feature_net(uri)
    if isinstance(net, FIDInceptionV3):
        return "FID Inception-v3 (TF inception-2015-12-05 weights, 2048-d pool features)"
    return f"{type(net).__name__} at {uri} (not the standard FID Inception: its FIDs compare only with its own)"


def _scored(feats: np.ndarray, ref: dict, n_boot: int, seed: int) -> dict[str, Any]:
    from ditcore.metrics.fid import few_samples_warning, fid_bootstrap

    boot = fid_bootstrap(feats, ref["mu"], ref["sigma"], n_boot=max(n_boot, 2), seed=seed)
    return {
        "fid": float(boot["fid"]),
        "fid_se": float(boot["se"]),
        "fid_ci": [float(v) for v in boot["ci"]],
        "n_samples": int(len(feats)),
        "few_samples_warning": few_samples_warning(len(feats), feats.shape[1]),
    }


def standard_fid(
    ckpt: str,
    manifest_uri: str,
    *,
    inception: str,
    train_source: Any,
    test_source: Any,
    settings: FIDSettings,
    n_ref: int = 4096,
    n_boot: int = 50,
    cache_dir: Optional[str] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """{"fid", "fid_se", "fid_ci", "n_boot", "n_samples", "fid_network", "reference_count", "floor": {...}} of
    `ckpt` (`n_boot`: the half-samples behind both intervals).

    `settings.num_samples` generated images (conditioned as in `evaluate_checkpoint`) and as many real test images
    (fewer if the test split is smaller: stated in the floor's "n_samples") are scored against the reference
    statistics of `n_ref` train images.
    """
    from ditcore.metrics.fid import few_samples_warning
    from pipelines.datasets.images import load_readable_images

    try:
        settings.check()
    except ValueError as e:
        raise ValueError(f"standard FID: {e}") from e
    manifest = Manifest.read(manifest_uri)
    size = int(manifest.image_size)
    ref = reference_stats(inception, train_source, size, n_ref, cache_dir)
    ref_warning = few_samples_warning(ref["count"], ref["mu"].shape[0])
    if ref_warning:
        print(f"[ditscale] WARNING: reference statistics: {ref_warning}", file=sys.stderr, flush=True)
    test = load_readable_images(test_source, size, settings.num_samples)["image"]
    floor = _scored(_features(inception, test), ref, n_boot, settings.seed)
    from pipelines.infra import storage

    model_cfg = storage.checkpoint_config(ckpt)["model"]
    kind = "text" if model_cfg.get("text_dim") else "class"
    n = settings.num_samples
    cond = conditions(manifest_uri, manifest, kind, n, int(model_cfg.get("num_classes") or 0))
    gen = generate_features(ckpt, manifest_uri, range(n), cond, settings, progress=progress, feature_net_uri=inception)
    out = _scored(gen["features"], ref, n_boot, settings.seed)
    return {
        **out,
        "n_boot": max(n_boot, 2),
        "fid_network": inception,
        "network": network_name(inception),
        "reference_count": ref["count"],
        "reference_few_samples_warning": ref_warning,
        "feature_dim": int(ref["mu"].shape[0]),
        "settings": settings.__dict__,
        "floor": {**floor, "source": str(test_source)},
    }
