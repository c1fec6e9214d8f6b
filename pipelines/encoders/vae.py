"""The image autoencoder: load a diffusers `AutoencoderKL`, encode to posterior mean/std, decode model latents.

One loader serves the project's own small VAE (trained by `pipelines.train_vae`, saved with `save_pretrained`)
and pretrained SD / SDXL / FLUX VAEs, from a local directory, an `s3://` prefix or a Hugging Face hub id.
Model-space latents are z_model = (z - shift_factor) * scaling_factor, as in the latent-dataset contract.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ditcore.preprocess import images_to_tensor, tensor_to_images
from pipelines.infra import hub, storage


class VAELoadError(ValueError):
    """A VAE path/id could not be loaded; the message names it and says why."""


def load_vae(
    path_or_id: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    require_safetensors: bool = False,
):
    """Load a diffusers AutoencoderKL (local dir, s3:// prefix or hub id) in eval mode on `device`/`dtype`.

    `require_safetensors` (the serving and evaluation paths): weights load only from *.safetensors, never from a
    pickled .bin, for local directories and hub ids alike.
    """
    from diffusers import AutoencoderKL
    from diffusers.utils import is_accelerate_available

    # Without `accelerate` diffusers falls back to low_cpu_mem_usage=False anyway, but only after printing an
    # install hint at every load; asking for it outright loads the same way without the hint.
    load_kw: dict = {} if is_accelerate_available() else {"low_cpu_mem_usage": False}
    if require_safetensors:
        load_kw["use_safetensors"] = True
    spec = str(path_or_id)
    if storage.is_s3(spec):
        spec = storage.local_copy(spec)
    local = Path(spec).expanduser()
    if local.exists():
        folder = local / subfolder if subfolder else local
        if not (folder / "config.json").is_file():
            raise VAELoadError(
                f"VAE directory {folder} has no config.json (expected a diffusers save_pretrained directory)"
            )
        if require_safetensors and not any(folder.glob("*.safetensors")):
            raise VAELoadError(f"VAE directory {folder}: no *.safetensors weights (pickled weights are refused here)")
        try:
            vae = AutoencoderKL.from_pretrained(str(local), subfolder=subfolder, torch_dtype=dtype, **load_kw)
        except Exception as exc:  # diffusers raises many types; re-raise with the path in the message
            raise VAELoadError(f"could not load VAE from {folder}: {exc}") from exc
    elif not hub.looks_like_hub_id(spec):
        raise FileNotFoundError(f"VAE directory not found: {spec}")
    else:
        hub.check_hub_id(spec, what="VAE", error=VAELoadError, subfolder=subfolder, revision=revision)
        try:
            vae = AutoencoderKL.from_pretrained(
                spec, subfolder=subfolder, revision=revision, torch_dtype=dtype, **load_kw
            )
        except Exception as exc:
            raise VAELoadError(
                f"VAE {spec!r} is not a local directory and could not be loaded from the Hugging Face hub "
                f"(revision={revision}, subfolder={subfolder}); "
                f"offline mode is HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}: {exc}"
            ) from exc
    vae._ditscale_source = {"path": str(path_or_id), "revision": revision, "subfolder": subfolder}
    return vae.to(device).eval().requires_grad_(False)


def _vae_input(vae, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [-1,1] (or uint8 [B,H,W,3], converted) on the VAE's device and dtype."""
    if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
        images = images_to_tensor(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B,3,H,W] in [-1,1], got shape {tuple(images.shape)}")
    return images.to(device=vae.device, dtype=vae.dtype)


@torch.no_grad()
def encode_images(vae, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [-1,1] [B,3,H,W] -> posterior (mean, std), each float32 [B,C,h,w] on CPU (no sample drawn)."""
    posterior = vae.encode(_vae_input(vae, images)).latent_dist
    return posterior.mean.float().cpu(), posterior.std.float().cpu()  # [B,C,h,w] each


@torch.no_grad()
def decode_to_images(vae, z_model: torch.Tensor, scaling_factor: float, shift_factor: float | None = 0.0) -> np.ndarray:
    """Model-space latents [B,C,h,w] -> uint8 numpy [B,H,W,3]; z = z_model / scaling_factor + shift_factor."""
    z = z_model.to(device=vae.device, dtype=vae.dtype) / scaling_factor + (shift_factor or 0.0)  # [B,C,h,w]
    x = vae.decode(z).sample  # [B,3,H,W] in ~[-1,1]
    return tensor_to_images(x.float())


def vae_downsample(vae) -> int:
    """Spatial downsampling factor: 2 per down block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_identity(vae, path: str | os.PathLike | None = None) -> dict:
    """The manifest's `vae` record: path, revision, scaling/shift factors, latent channels, downsample factor."""
    source = getattr(vae, "_ditscale_source", {}) or {}
    cfg = vae.config
    path = str(path) if path is not None else source.get("path", getattr(cfg, "_name_or_path", None))
    identity = {
        "path": path,
        "revision": source.get("revision"),
        "scaling_factor": float(cfg.scaling_factor),
        "shift_factor": float(cfg.shift_factor or 0.0),
        "latent_channels": int(cfg.latent_channels),
        "downsample": vae_downsample(vae),
    }
    if source.get("subfolder"):
        identity["subfolder"] = source["subfolder"]  # e.g. "vae" inside a full SD pipeline repo
    return identity
