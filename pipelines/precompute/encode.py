"""The per-batch work of precompute, as callables for Ray Data `map_batches`.

Two stages, so CPU work and accelerator work scale separately:
- `decode_batch` (plain Ray tasks, fused with the shard read): bytes -> PIL -> `display_rgb` -> size check ->
  ADM `center_crop_arr` -> uint8 [N,S,S,3]. Bad bytes become an `error` on the row, never an exception.
- `Encoder` (an actor pool: the models load once per actor): VAE posterior mean/std of the image AND of
  its horizontal flip (one forward over 2N images), text states/mask/pooled, and per-row FID features
  that the driver folds into per-shard sums (mean/covariance need only sum x and sum x x^T).
Rows that already failed pass through with zero-filled tensors so every column keeps one fixed shape.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch

from ditcore.preprocess import center_crop_arr, images_to_tensor
from pipelines.imaging import display_rgb
from pipelines.precompute.sink import NULL_SHARD
from pipelines.validation import BLANK_PROMPT, is_blank_prompt


def _decode_one(data: bytes, image_size: int) -> tuple[np.ndarray | None, str]:
    """(uint8 [S,S,3], "") or (None, reason) for one encoded image."""
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        return None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: truncated files fail here, not later inside the crop
            # Upright as displayed (EXIF Orientation), any mode to RGB, alpha and colour keys on white.
            rgb = display_rgb(img)
    except UnidentifiedImageError:
        return None, "not an image: no image format recognises these bytes"
    except Image.DecompressionBombError as exc:
        return None, f"image too large to decode safely: {exc}"
    except MemoryError:  # the worker's state, not the image's: the task fails and Ray retries it
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is this row's failure, never the job's
        msg = str(exc)
        if "truncated" in msg.lower():
            return None, f"truncated image: {msg}"
        return None, f"corrupt image: {type(exc).__name__}: {msg}"
    w, h = rgb.size
    if min(w, h) < image_size:
        # Upscaling would invent detail the FID reference and the latents should not contain.
        return None, f"image too small: {w}x{h} is below the crop size {image_size}"
    return center_crop_arr(rgb, image_size), ""


def decode_batch(
    batch: dict[str, np.ndarray], image_size: int, require_captions: bool, require_labels: bool = False
) -> dict[str, np.ndarray]:
    """Decode/convert/crop every row's bytes into `image` uint8 [N,S,S,3]; failures go to `error`. With
    `require_labels` (a class-conditional set: labelled source, no text) a row without a label fails: stored as
    null, it reads back as label -1, which no class embedding has."""
    n = len(batch["id"])
    errors = [str(e) for e in batch["error"]]
    if "image" in batch and len(batch["image"]) == n:
        images = np.asarray(batch["image"], dtype=np.uint8)  # built-in rows are rendered at the target size
    else:
        images = np.zeros((n, image_size, image_size, 3), np.uint8)
        for i in range(n):
            if errors[i]:
                continue
            arr, reason = _decode_one(bytes(batch["data"][i]), image_size)
            if arr is None:
                errors[i] = reason
            else:
                images[i] = arr
    if require_captions:
        for i in range(n):
            if not errors[i] and not bool(batch["has_caption"][i]):
                errors[i] = "missing caption"
            elif not errors[i] and is_blank_prompt(batch["caption"][i]) and int(batch["shard"][i]) != NULL_SHARD:
                errors[i] = f"empty caption; {BLANK_PROMPT}"
    if require_labels:
        for i in range(n):
            if not errors[i] and int(batch["label"][i]) < 0 and int(batch["shard"][i]) != NULL_SHARD:
                errors[i] = "missing label (a class-conditional data set: text is null and the source has labels)"
    out = {k: v for k, v in batch.items() if k not in ("data", "image")}
    out["image"] = images
    out["error"] = np.array(errors, dtype=object)
    return out


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """ "auto" -> cuda with bfloat16 (float16 without bf16 support) when a GPU is visible, else cpu float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        if dev.type == "cuda":
            return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, torch.float32
    return dev, getattr(torch, dtype)


class Encoder:
    """Ray Data actor: images -> VAE posterior mean/std (+ flip), captions -> text states, images -> FID features.

    With `vae=None` (pixel space) the posterior mean is the image in [-1, 1] and its std is 0."""

    def __init__(
        self,
        *,
        vae: dict[str, Any] | None,
        text: dict[str, Any] | list[dict[str, Any]] | None,
        feature_net: str | None,
        image_size: int,
        device: str = "auto",
        dtype: str = "auto",
        num_threads: int = 1,
        batch_size: int = 32,
    ) -> None:
        from pipelines.encoders import vae as vae_lib

        if num_threads > 0:
            torch.set_num_threads(num_threads)  # one actor per CPU share: oversubscription slows every actor
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.image_size = image_size
        self.batch_size = batch_size
        # None: pixel space, the "latent" is the image itself (posterior std 0).
        self.vae = None
        if vae is not None:
            self.vae = vae_lib.load_vae(vae["path"], device=self.device, dtype=self.dtype, **_vae_kwargs(vae))
        self.text = None
        if text is not None:
            from pipelines.encoders.text import is_multi, load_text_encoder, load_text_encoders

            load = load_text_encoders if is_multi(text) else load_text_encoder  # a list: joined (SD3 style)
            self.text = load(text, device=self.device, dtype=dtype)
        self.feature_net = None
        if feature_net:
            from ditcore.metrics.features import load_feature_net
            from pipelines.infra import storage

            with storage.local_copy_scope(feature_net) as local:
                self.feature_net = load_feature_net(local).to(self.device).eval()
        # One dry run fixes every output shape, so batches whose rows all failed still have typed columns.
        probe = self._encode(np.zeros((1, image_size, image_size, 3), np.uint8), [""])
        self.shapes = {k: v.shape[1:] for k, v in probe.items()}
        self.dtypes = {k: v.dtype for k, v in probe.items()}

    @torch.no_grad()
    def _encode(self, images: np.ndarray, captions: list[str]) -> dict[str, np.ndarray]:
        from pipelines.encoders import vae as vae_lib

        x = images_to_tensor(images).to(self.device, self.dtype)  # [B,3,S,S] in [-1,1]
        x2 = torch.cat([x, torch.flip(x, dims=[-1])])  # [2B,3,S,S]: image then its horizontal flip
        if self.vae is None:  # pixel space
            mean, std = x2.float(), torch.zeros_like(x2, dtype=torch.float32)
        else:
            mean, std = vae_lib.encode_images(self.vae, x2)  # [2B,C,h,w] each
        b = x.shape[0]
        out = {
            "latent_mean": mean[:b].float().cpu().numpy().astype(np.float16),
            "latent_std": std[:b].float().cpu().numpy().astype(np.float16),
            "latent_mean_flip": mean[b:].float().cpu().numpy().astype(np.float16),
            "latent_std_flip": std[b:].float().cpu().numpy().astype(np.float16),
        }
        if self.text is not None:
            out.update(self.text.encode(captions))
        if self.feature_net is not None:
            feats = self.feature_net.features(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))  # [B,F]
            out["fid_feat"] = feats.float().cpu().numpy().astype(np.float32)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encode the rows without an error; failed rows get zero tensors (dropped again on commit)."""
        n = len(batch["id"])
        errors = [str(e) for e in batch["error"]]
        good = np.array([not e for e in errors], dtype=bool)
        out = {k: v for k, v in batch.items() if k != "image"}
        cols = {k: np.zeros((n, *self.shapes[k]), self.dtypes[k]) for k in self.shapes}
        all_idx = np.flatnonzero(good)
        captions_all = np.asarray(batch["caption"], dtype=object)
        images_all = np.asarray(batch["image"])
        # Ray hands over one block (a chunk of one shard, see build_dataset); the models see `batch_size` images
        # at a time.
        for start in range(0, len(all_idx), self.batch_size):
            idx = all_idx[start : start + self.batch_size]
            enc = self._encode(images_all[idx], [str(c) for c in captions_all[idx]])
            for k, v in enc.items():
                cols[k][idx] = v
            # fp16 storage of an overflowing posterior would silently poison training: fail those rows.
            finite = np.ones(len(idx), dtype=bool)
            for k in ("latent_mean", "latent_std", "latent_mean_flip", "latent_std_flip"):
                finite &= np.isfinite(enc[k].reshape(len(idx), -1)).all(1)
            for j in np.flatnonzero(~finite):
                errors[idx[j]] = "non-finite latent (VAE overflow in reduced precision?)"
        out.update(cols)
        out["error"] = np.array(errors, dtype=object)
        return out


def _vae_kwargs(vae: dict[str, Any]) -> dict[str, Any]:
    return {k: vae[k] for k in ("revision", "subfolder") if vae.get(k)}


def default_num_threads(num_cpus: float) -> int:
    """Torch intra-op threads for an actor holding `num_cpus` CPUs (at least 1)."""
    return max(1, int(num_cpus or os.cpu_count() or 1))
