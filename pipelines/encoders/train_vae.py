"""Train the offline default VAE: a small diffusers `AutoencoderKL` on the built-in shapes or on any source the
precompute reads, saved with `save_pretrained`.

    ditscale data train-vae [--config FILE] [key=value ...]      (or: python -m pipelines.train_vae ...)
    ditscale data train-vae source.kind=parquet source.path=outputs/data/fashion-mnist/train out=...

Without `source`, images are generated on the fly from `ditcore.data.builtin` (no files). With `source` (any
`pipelines.sources.SourceConfig`: image folder, parquet, WebDataset), the first `source.limit` images of its
seeded shuffled order are decoded once as the precompute decodes them; the last `eval_images` of them (at most a
fifth) are held out for the PSNR, the rest are drawn at random for training, with random horizontal flips; the
object-pixel weighting then treats each image's top-left pixel colour as its background.

The loss is the usual KL-VAE one without the perceptual and GAN terms: L1 + MSE reconstruction plus a small KL to
N(0, I). After training the
latent `scaling_factor` (1 / std of posterior samples over a batch of training images, as Rombach et al. 2022
Sec. 4.3 / the SD VAE do) and optionally a `shift_factor` (their mean) are written into the diffusers config,
so the precompute and the samplers read them like those of any pretrained VAE.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ditcore.config import ConfigError, to_dict
from ditcore.data.builtin import BACKGROUNDS, BuiltinSpec, render_batch
from ditcore.preprocess import images_to_tensor
from pipelines.encoders.training import HELDOUT_START, TRAIN_RANGE, EncoderTrainingConfig, warmup_cosine
from pipelines.infra import storage


@dataclass
class TrainVAEConfig(EncoderTrainingConfig):
    """Small KL autoencoder on the built-in data; defaults take about four minutes on 2 CPU cores."""

    POSITIVE = ("batch_size", "scale_images", "eval_images", "latent_channels", "layers_per_block")

    out: str = "outputs/vae"  # local directory or s3:// prefix
    # Architecture: len(block_out_channels) - 1 stride-2 stages -> downsample 4 and 8x8x4 latents at 32 px.
    block_out_channels: list[int] = field(default_factory=lambda: [32, 32, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    mid_block_add_attention: bool = True
    # Optimisation.
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    foreground_weight: float = 10.0  # extra reconstruction weight on object pixels (non-background)
    kl_weight: float = 1e-6  # per-sample KL summed over latent elements; small, as in the SD VAE
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    # Latent statistics and evaluation.
    scale_images: int = 512  # images used to measure the latent std (-> scaling_factor)
    compute_shift: bool = False  # also store shift_factor = latent mean (else 0)
    eval_images: int = 256  # held-out images for the final PSNR
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"block_out_channels: {self.block_out_channels} must be non-empty and divisible by "
                f"norm_num_groups={self.norm_num_groups}"
            )
        downsample = 2 ** (len(self.block_out_channels) - 1)
        if self.image_size % downsample:
            raise ConfigError(
                f"image_size: {self.image_size} is not divisible by the VAE downsample factor {downsample}"
            )


def build_vae(cfg: TrainVAEConfig):
    """A freshly initialised diffusers AutoencoderKL with the configured shape."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size,
        mid_block_add_attention=cfg.mid_block_add_attention,
        force_upcast=False,  # trained in fp32 on well-scaled data; fp16/bf16 inference is fine
    )


def _batch(spec: BuiltinSpec, indices: np.ndarray) -> torch.Tensor:
    """Images of the given built-in indices as float [B,3,H,W] in [-1,1]."""
    images = np.stack([render_batch(int(i), int(i) + 1, spec)["image"][0] for i in indices])
    return images_to_tensor(images)


def _range_batches(spec: BuiltinSpec, start: int, count: int, batch_size: int):
    for s in range(start, start + count, batch_size):
        yield images_to_tensor(render_batch(s, min(s + batch_size, start + count), spec)["image"])


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1,1] over the [0,1] range (uint8-rounded, as a saved image would be)."""
    a = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
    b = ((y.float().clamp(-1, 1) + 1) * 127.5).round()
    mse = ((a - b) / 255.0).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def evaluate_reconstruction(vae, spec: BuiltinSpec, count: int, batch_size: int = 64) -> dict[str, float]:
    """Held-out reconstruction quality (posterior mean -> decode): PSNR over all pixels and over object pixels only."""
    background = torch.tensor(BACKGROUNDS[spec.background], dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1.0
    return _reconstruction(vae, _range_batches(spec, HELDOUT_START, count, batch_size), lambda x: background)


def evaluate_psnr(vae, spec: BuiltinSpec, count: int, batch_size: int = 64) -> float:
    """Reconstruction PSNR (posterior mean -> decode) on `count` held-out built-in images."""
    return evaluate_reconstruction(vae, spec, count, batch_size)["psnr_db"]


def latent_statistics(vae, spec: BuiltinSpec, count: int, batch_size: int = 64, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over all elements of posterior samples z of `count` training images."""
    return _latent_stats(vae, _range_batches(spec, 0, count, batch_size), seed)


class _SourceImages:
    """A source decoded into memory: random training batches (with flips), fixed held-out and scale batches."""

    def __init__(self, cfg: TrainVAEConfig) -> None:
        from pipelines.datasets.images import load_source_images

        data = load_source_images(cfg.source, cfg.image_size)
        images = data["image"]  # uint8 [N,S,S,3]
        n_held = min(cfg.eval_images, len(images) // 5)
        if len(images) - n_held < 2:
            raise ConfigError(f"source: {len(images)} readable images at {cfg.image_size} px; need at least 2")
        self.train, self.held = images[: len(images) - n_held], images[len(images) - n_held :]
        self.failed = int(data["failed"])
        print(
            f"train-vae: {len(self.train)} training and {len(self.held)} held-out images from "
            f"{cfg.source.path or cfg.source.kind} ({self.failed} unreadable)",
            flush=True,
        )

    def batch(self, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        idx = rng.integers(0, len(self.train), batch_size)
        x = images_to_tensor(self.train[idx])  # [B,3,H,W] in [-1,1]
        flip = torch.from_numpy(rng.random(batch_size) < 0.5)
        x[flip] = x[flip].flip(-1)
        return x

    def chunks(self, images: np.ndarray, count: int, batch_size: int = 64):
        for s in range(0, min(count, len(images)), batch_size):
            yield images_to_tensor(images[s : min(s + batch_size, count)])


def _background(x: torch.Tensor, cfg: TrainVAEConfig) -> torch.Tensor:
    """Background colour per image [B|1,3,1,1] in [-1,1]: the built-in one, or each image's top-left pixel."""
    if cfg.source is None:
        return torch.tensor(BACKGROUNDS[cfg.background], dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1.0
    return x[:, :, :1, :1]


@torch.no_grad()
def _reconstruction(vae, batches, background_fn) -> dict[str, float]:
    """PSNR over all pixels and over object (non-background) pixels of posterior-mean reconstructions."""
    vae.eval()
    sq, n, fg_sq, fg_n = 0.0, 0, 0.0, 0
    for x in batches:
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        a = ((x.clamp(-1, 1) + 1) * 127.5).round()  # [B,3,H,W] in 0..255
        b = ((rec.float().clamp(-1, 1) + 1) * 127.5).round()
        err = ((a - b) / 255.0).pow(2)
        bg = ((background_fn(x) + 1) * 127.5).round()
        fg = ((a - bg).abs().amax(1, keepdim=True) > 2).expand_as(err)  # object pixels
        sq, n = sq + err.sum().item(), n + err.numel()
        fg_sq, fg_n = fg_sq + err[fg].sum().item(), fg_n + int(fg.sum())

    def to_db(total: float, count_: int) -> float:
        mse = total / max(count_, 1)
        return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)

    return {"psnr_db": to_db(sq, n), "foreground_psnr_db": to_db(fg_sq, fg_n)}


@torch.no_grad()
def _latent_stats(vae, batches, seed: int) -> tuple[float, float]:
    vae.eval()
    gen = torch.Generator().manual_seed(seed)
    zs = []
    for x in batches:
        post = vae.encode(x).latent_dist
        zs.append(post.mean + post.std * torch.randn(post.mean.shape, generator=gen))  # [B,C,h,w]
    z = torch.cat(zs)
    return float(z.mean()), float(z.std())


def _fit(vae, cfg: TrainVAEConfig, next_batch) -> tuple[float | None, float]:
    """The optimisation loop; returns (EMA of the loss, seconds)."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, cfg.steps, 0.05))
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.monotonic()
    bar = tqdm(range(cfg.steps), desc="train-vae", disable=not cfg.progress or None, dynamic_ncols=True)
    ema_loss = None
    for step in bar:
        x = next_batch()  # [B,3,H,W]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)  # reparameterised sample
        rec = vae.decode(z).sample  # [B,3,H,W]
        # Objects cover ~10% of the built-in pixels; up-weighting them keeps the background from dominating the
        # loss, which otherwise leaves colours (red / orange / yellow) merged long after PSNR looks good.
        weight = (
            1.0 + cfg.foreground_weight * ((x - _background(x, cfg)).abs().amax(1, keepdim=True) > 0.02).float()
        )  # [B,1,H,W]
        norm = weight.sum() * x.shape[1]
        l1 = (weight * (rec - x).abs()).sum() / norm
        mse = (weight * (rec - x).pow(2)).sum() / norm
        kl = post.kl().mean()  # per-sample KL summed over latent elements
        loss = cfg.l1_weight * l1 + cfg.mse_weight * mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{ema_loss:.4f}", psnr=f"{psnr(x, rec.detach()):.1f}", kl=f"{kl.item():.0f}")
    bar.close()
    return ema_loss, time.monotonic() - t0


def train_vae(cfg: TrainVAEConfig) -> str:
    """Train, measure the latent scale, save with `save_pretrained` to `cfg.out`; returns the output path/URI."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = _SourceImages(cfg) if cfg.source is not None else None
    spec = BuiltinSpec(cfg.image_size, cfg.max_objects, cfg.data_seed, cfg.background) if data is None else None
    vae = build_vae(cfg).train()
    rng = np.random.default_rng(cfg.seed)
    if data is None:
        ema_loss, train_s = _fit(vae, cfg, lambda: _batch(spec, rng.integers(0, TRAIN_RANGE, cfg.batch_size)))
    else:
        ema_loss, train_s = _fit(vae, cfg, lambda: data.batch(rng, cfg.batch_size))

    vae.eval()
    if data is None:
        mean, std = latent_statistics(vae, spec, cfg.scale_images, seed=cfg.seed)
        quality = evaluate_reconstruction(vae, spec, cfg.eval_images)
        n_eval = cfg.eval_images
    else:
        mean, std = _latent_stats(vae, data.chunks(data.train, cfg.scale_images), cfg.seed)
        quality = _reconstruction(vae, data.chunks(data.held, len(data.held)), lambda x: _background(x, cfg))
        n_eval = len(data.held)
    shift = mean if cfg.compute_shift else 0.0
    # Scale so that (z - shift) has unit std, the input scale diffusion noise schedules assume.
    centred_std = std if cfg.compute_shift else math.sqrt(std**2 + mean**2)
    scaling = 1.0 / max(centred_std, 1e-8)
    vae.register_to_config(scaling_factor=float(scaling), shift_factor=float(shift))
    value = quality["psnr_db"]

    summary = {
        **quality,
        "steps": cfg.steps,
        "train_seconds": round(train_s, 2),
        "latent_mean": mean,
        "latent_std": std,
        "scaling_factor": scaling,
        "shift_factor": shift,
        "final_loss": ema_loss,
        "params": sum(p.numel() for p in vae.parameters()),
        "eval_images": n_eval,
        "data": "builtin" if data is None else {"source": to_dict(cfg.source), "train_images": len(data.train)},
        "config": to_dict(cfg),
    }
    out = _save(vae, cfg.out, summary)
    print(
        f"train-vae: {cfg.steps} steps in {train_s:.1f}s; scaling_factor={scaling:.4f} shift_factor={shift:.4f}; "
        f"held-out reconstruction PSNR {value:.2f} dB (object pixels {quality['foreground_psnr_db']:.2f} dB) "
        f"on {n_eval} images -> {out}",
        flush=True,
    )
    return out


def _save(vae, out: str, summary: dict) -> str:
    """save_pretrained + train_summary.json, published to `out` (local or s3://) in one step."""

    def write(d: Path) -> None:
        vae.save_pretrained(str(d), safe_serialization=True)
        (d / "train_summary.json").write_text(json.dumps(summary, indent=2))

    return storage.publish_dir(out, write)
