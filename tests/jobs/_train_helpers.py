"""Tiny latent datasets written per the latent-dataset contract (parquet + manifest.json), for the train/sweep tests.

Tensor columns are flat fixed-size lists with their shapes in manifest["columns"], as pipelines.precompute
writes them; the real reader (pipelines.dataset) reads them back, so the jobs are tested through the same
code a cluster run uses, without the cost of a VAE/text-encoder precompute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_COLUMNS: dict[str, dict] = {}


def _tensor_col(arr: np.ndarray, name: str = "") -> pa.Array:
    arr = np.ascontiguousarray(arr)
    if name:
        _COLUMNS[name] = {"dtype": str(arr.dtype), "shape": list(arr.shape[1:])}
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), int(np.prod(arr.shape[1:])))


def make_latent_dataset(
    root: Path,
    *,
    n: int = 32,
    channels: int = 4,
    size: int = 8,
    num_classes: Optional[int] = 10,
    text: Optional[tuple[int, int, int]] = None,
    seed: int = 0,
    shards: int = 2,
    vae_path: Optional[str] = None,
    feature_net: Optional[str] = None,
    fid_stats: Optional[tuple[np.ndarray, np.ndarray]] = None,
    builtin: bool = False,
    mirror_nan: bool = False,
    captions: Optional[list[str]] = None,
) -> str:
    """Write a small latent dataset; `text=(L, D, Dp)` makes it text-conditional (`captions`, default "caption i").
    mirror_nan: NaN mirrored latents, so a run that trains on a mirror gets a non-finite loss. Returns its directory."""
    root = Path(root)
    _COLUMNS.clear()
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Structured latents (per-class / per-row means) so a model can actually reduce the loss.
    base = rng.normal(size=(max(num_classes or 4, 4), channels, size, size)).astype(np.float32)
    labels = (np.arange(n) % (num_classes or 4)).astype(np.int32)
    mean = base[labels] + 0.1 * rng.normal(size=(n, channels, size, size)).astype(np.float32)
    std = np.full((n, channels, size, size), 0.05, np.float32)
    cols: dict[str, list] = {}
    # builtin=True: ids/source as pipelines.sources writes them for the built-in set (caption-attribute accuracy).
    ids = [f"builtin-0-{i:08d}" if builtin else f"row-{i:05d}" for i in range(n)]
    for s in range(shards):
        sl = slice(s * n // shards, (s + 1) * n // shards)
        table = {
            "id": pa.array(ids[sl]),
            "latent_mean": _tensor_col(name="latent_mean", arr=mean[sl].astype(np.float16)),
            "latent_std": _tensor_col(name="latent_std", arr=std[sl].astype(np.float16)),
            "latent_mean_flip": _tensor_col(
                name="latent_mean_flip", arr=((np.nan if mirror_nan else 1.0) * mean[sl, :, :, ::-1]).astype(np.float16)
            ),
            "latent_std_flip": _tensor_col(name="latent_std_flip", arr=std[sl, :, :, ::-1].astype(np.float16)),
        }
        if num_classes is not None:
            table["label"] = pa.array(labels[sl], pa.int32())
        if text is not None:
            L, D, Dp = text
            emb = rng.normal(size=(n, L, D)).astype(np.float16)
            mask = np.zeros((n, L), bool)
            mask[:, : L // 2] = True
            pooled = rng.normal(size=(n, Dp)).astype(np.float16)
            table["caption"] = pa.array((captions or [f"caption {i}" for i in range(n)])[sl])
            table["text_emb"] = _tensor_col(name="text_emb", arr=emb[sl])
            table["text_mask"] = _tensor_col(name="text_mask", arr=mask[sl])
            table["text_pooled"] = _tensor_col(name="text_pooled", arr=pooled[sl])
        pq.write_table(pa.table(table), root / "data" / f"part-{s:05d}.parquet")
        cols.setdefault("n", []).append(sl.stop - sl.start)
    text_meta = None
    if text is not None:
        L, D, Dp = text
        from safetensors.numpy import save_file

        save_file(
            {
                "text_emb": np.zeros((L, D), np.float16),
                "text_mask": np.eye(1, L, dtype=bool)[0],
                "text_pooled": np.zeros((Dp,), np.float16),
            },
            str(root / "null_text.safetensors"),
        )
        text_meta = {"encoder": "test", "max_length": L, "dim": D, "pooled_dim": Dp, "null": "null_text.safetensors"}
    fid_meta = None
    if fid_stats is not None:
        import torch
        from safetensors.torch import save_file as save_t

        mu, sigma = fid_stats
        save_t(
            {
                "mu": torch.from_numpy(np.asarray(mu, np.float64)),
                "sigma": torch.from_numpy(np.asarray(sigma, np.float64)),
            },
            str(root / "fid_stats.safetensors"),
        )
        fid_meta = {"feature_net": feature_net, "feature_dim": int(len(mu)), "stats": "fid_stats.safetensors"}
    manifest = {
        "schema_version": 1,
        "source": (
            {"kind": "builtin", "count": n, "image_size": size * 4, "max_objects": 2, "seed": 0}
            if builtin
            else {"kind": "synthetic-test"}
        ),
        "image_size": size * 4,
        "num_classes": num_classes,
        "counts": {"input": n, "written": n, "failed": 0},
        "vae": {
            "path": vae_path,
            "revision": None,
            "scaling_factor": 0.5,
            "shift_factor": 0.1,
            "latent_channels": channels,
            "downsample": 4,
            "latent_size": size,
        },
        "text": text_meta,
        "latent_stats": {"mean": [0.0] * channels, "std": [1.0] * channels},
        "fid": fid_meta,
        "columns": dict(_COLUMNS),
        "data": "data",
        "config": {},
        "code_version": "test",
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return str(root)


def make_eval_assets(root: Path) -> dict:
    """A random tiny diffusers VAE (downsample 4), a small built-in attribute net (~16-d features) and FID
    reference stats of its features on built-in images: what a precomputed data set's manifest points at."""
    import torch

    from ditcore.data.builtin import BuiltinSpec, render_batch
    from ditcore.metrics.features import BuiltinAttributeNet, save_feature_net
    from ditcore.metrics.fid import feature_stats
    from tests.pipelines._precompute_helpers import tiny_vae

    root = Path(root)
    vae = tiny_vae(root / "vae")
    torch.manual_seed(0)
    import inspect

    params = inspect.signature(BuiltinAttributeNet).parameters
    small = {"cell_dim": 2} if "cell_dim" in params else {"feature_dim": 16}  # ~16-d features either way
    net = BuiltinAttributeNet(image_size=32, width=8, **small)
    fnet = save_feature_net(net, root / "features")
    images = render_batch(0, 64, BuiltinSpec(image_size=32))["image"]
    with torch.no_grad():
        mu, sigma = feature_stats(net.features(images).double().numpy())
    return {"vae_path": str(vae), "feature_net": str(fnet), "fid_stats": (mu, sigma)}


# The text-conditional built-in set the evaluation / sweep tests share: (L, D, Dp) = (8, 16, 16), no class labels,
# ids as pipelines.sources writes them for the built-in data (caption-attribute accuracy).
TEXT_BUILTIN = {"num_classes": None, "text": (8, 16, 16), "builtin": True}

FLOW_VELOCITY = {"process": "flow", "prediction": "velocity"}


def make_eval_dataset(root: Path, *, fid: bool = True, **kwargs) -> tuple[str, dict]:
    """make_eval_assets under root/assets and a latent data set under root/lat whose manifest names their VAE (and,
    with fid=True, the feature net and FID reference stats); kwargs go to make_latent_dataset.

    Returns (data set directory, assets)."""
    root = Path(root)
    assets = make_eval_assets(root / "assets")
    refs = {"feature_net": assets["feature_net"], "fid_stats": assets["fid_stats"]} if fid else {}
    return make_latent_dataset(root / "lat", vae_path=assets["vae_path"], **refs, **kwargs), assets


def perturbed_model(preset: str, *, scale: float = 0.05, **kwargs):
    """build_model(preset, **kwargs) after torch.manual_seed(0), every weight moved by scale * N(0, 1): a fresh
    adaLN-Zero model outputs zeros, so its samples would depend neither on the weights, the seed nor the label."""
    import torch

    from ditcore.models import build_model

    torch.manual_seed(0)
    model = build_model(preset, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def save_model_checkpoint(
    path: Path, model, data: dict, *, objective: dict = FLOW_VELOCITY, state: Optional[dict] = None, **sections
) -> str:
    """`model` saved as its own EMA, config {model, objective, data, **sections}; returns the checkpoint path."""
    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import config_to_dict

    config = {"model": config_to_dict(model.config), "objective": objective, "data": data, **sections}
    return str(save_checkpoint(path, model=model, ema=model, config=config, state=state or {}))


# The optimiser settings of the tiny training runs: one warm-up step, a learning rate that moves a tiny model.
TINY_OPTIM = ("optim.warmup_steps=1", "optim.lr=0.003")


def train_overrides(
    manifest: str,
    tmp: Path,
    *extra: str,
    preset: str = "MMDiT-T",
    batch_size: int = 8,
    val_samples: int = 0,
    tracking: bool = True,
) -> list[str]:
    """Overrides of a tiny training run on `manifest`, checkpoints under tmp/runs (and, with tracking=True, an MLflow
    sqlite store tmp/mlflow.db), then `extra`."""
    tmp = Path(tmp)
    return [
        f"data.manifest={manifest}",
        f"data.batch_size={batch_size}",
        f"data.val_samples={val_samples}",
        f"model.preset={preset}",
        f"checkpoint.storage={tmp / 'runs'}",
        *([f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}"] if tracking else []),
        *extra,
    ]


def train_config(manifest: str, tmp: Path, *extra: str, **kwargs):
    """TrainConfig of train_overrides(manifest, tmp, *extra, **kwargs)."""
    from jobs.train.config import TrainConfig
    from pipelines.infra.config_files import load_config

    return load_config(TrainConfig, None, train_overrides(manifest, tmp, *extra, **kwargs))


def budget_override(cfg, steps: int) -> str:
    """The budget_flops override that makes `cfg` train `steps` steps of its global batch."""
    from jobs.train.plan import resolve_run

    fpi = resolve_run(cfg, check_mlflow=False).flops["train_flops_per_image"]
    return f"budget_flops={fpi * cfg.data.batch_size * steps}"


def config_maker(*base: str, **kwargs):
    """A module's config of tiny runs: `make(manifest, tmp, *extra, steps=None)` is
    train_config(manifest, tmp, *base, *extra, **kwargs); with `steps`, the budget_override that trains that many steps
    of the base config's global batch goes before `extra`."""

    def make(manifest: str, tmp: Path, *extra: str, steps: Optional[int] = None):
        if steps is not None:
            extra = (budget_override(train_config(manifest, tmp, *base, **kwargs), steps), *extra)
        return train_config(manifest, tmp, *base, *extra, **kwargs)

    return make


def local_ray(num_cpus: int):
    """Generator for a module-scoped fixture: a fresh private local Ray with `num_cpus` CPUs, no dashboard."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    yield
    ray.shutdown()
