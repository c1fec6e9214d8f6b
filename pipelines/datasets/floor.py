"""The data's own FID floor: real held-out images scored like generated samples.

A model's FID is compared with the data set's reference statistics (computed by the precompute over the train
rows with the manifest's feature net). Even a perfect generator would not reach 0: N samples give a noisy,
upward-biased estimate (the bias grows like 1/N), and a test split differs a little from the train split. The
floor is that FID for real test images at the same sample count N and with the same feature net as the
evaluation, so a model's FID reads against it: FID(model) - floor is what the model still has to close.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pipelines.infra import storage
from pipelines.sources import SourceConfig


def _net(uri: str):
    from ditcore.metrics.features import load_feature_net

    with storage.local_copy_scope(uri) as local:
        return load_feature_net(local).eval()


def _features(net, images: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = [net.features(images[i : i + batch_size]).double().numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def fid_floor(
    manifest_uri: str,
    test_split: SourceConfig | str | os.PathLike,
    n_samples: int,
    feature_net: str | None = None,
    *,
    allow_fewer: bool = False,
    n_boot: int = 0,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """FID of `n_samples` real test images against the data set's reference statistics (the data's own floor).

    manifest_uri: the latent data set (its manifest records the feature net and the reference statistics).
    test_split: a held-out source (folder / parquet path or SourceConfig) of the same data, decoded like the
        precompute decodes (`load_source_images`: its shuffled order, the first `n_samples` images that decode).
    n_samples: the evaluation's sample count; fewer test images than that is a ValueError unless `allow_fewer`,
        which uses all of them (the result's "n_samples" says how many).
    feature_net: None uses the manifest's; a path must name the same network (same feature dimension) or the
        comparison with the stored statistics would be meaningless (ValueError).
    n_boot > 0 adds half-samples of the test images ("se", "ci", "boot_shift", as `fid_bootstrap`: the interval
        is recentred on the estimate, the raw percentile one is "ci_percentile").

    Returns {"fid", "n_samples", "requested_samples", "feature_net", "feature_dim", "reference_count",
    "test_source", "few_samples_warning", (+ "se", "ci", "ci_level", "n_boot")}.
    """
    from ditcore.metrics.fid import feature_stats, few_samples_warning, fid_bootstrap, frechet_distance
    from pipelines.datasets.images import load_readable_images
    from pipelines.latents.reader import load_fid_stats, read_manifest

    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    manifest = read_manifest(manifest_uri)
    fid = manifest.fid
    if fid is None or not fid.feature_net:
        raise ValueError(f"{manifest_uri}: the data set records no FID feature net (manifest fid.feature_net)")
    mu_ref, sigma_ref = load_fid_stats(manifest_uri)
    net_uri = feature_net or fid.feature_net
    data = load_readable_images(test_split, manifest.image_size, int(n_samples))
    n = len(data["id"])
    if n < n_samples and not allow_fewer:
        raise ValueError(
            f"test split {data['source'].path}: {n} readable images, fewer than n_samples={n_samples} "
            "(pass allow_fewer=True to use them all)"
        )
    feats = _features(_net(net_uri), data["image"], batch_size)  # [n, F]
    if feats.shape[1] != mu_ref.shape[0]:
        raise ValueError(
            f"feature net {net_uri} gives {feats.shape[1]}-d features but the reference statistics of "
            f"{manifest_uri} are {mu_ref.shape[0]}-d (computed with {fid.feature_net})"
        )
    mu, sigma = feature_stats(feats)
    out: dict[str, Any] = {
        "fid": frechet_distance(mu, sigma, mu_ref, sigma_ref),
        "n_samples": n,
        "requested_samples": int(n_samples),
        "feature_net": net_uri,
        "feature_dim": int(feats.shape[1]),
        "reference_count": int(fid.count),
        "test_source": str(data["source"].path),
        "few_samples_warning": few_samples_warning(n, feats.shape[1]),
    }
    if n_boot > 0:
        boot = fid_bootstrap(feats, mu_ref, sigma_ref, n_boot=n_boot, seed=seed)
        out.update({k: boot[k] for k in ("se", "ci", "ci_percentile", "ci_level", "n_boot", "boot_shift")})
    return out
