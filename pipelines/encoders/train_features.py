"""Train the built-in attribute network (FID features + caption-attribute heads) on the built-in shapes.

    ditscale data train-features [--config FILE] [key=value ...]      (or: python -m pipelines.train_features ...)

Images are generated on the fly from `ditcore.data.builtin`; the net predicts shape (or "absent"), colour and
size for each cell of the 3x3 position grid. Light augmentation (one-pixel shifts, Gaussian noise, slight blur)
keeps the heads and features usable on generated images, which are never pixel-exact. The held-out attribute
accuracy is printed and stored in config.json's "meta" next to the weights (`save_feature_net`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ditcore.config import ConfigError, to_dict
from ditcore.data.builtin import COLOURS, SHAPES, SIZES, BuiltinSpec, render_batch
from ditcore.metrics.features import (
    BuiltinAttributeNet,
    attribute_accuracies,
    attribute_loss,
    cell_targets,
    images_to_unit,
    save_feature_net,
)
from pipelines.infra import storage

TRAIN_RANGE = 1_000_000_000
HELDOUT_START = 2_000_000_000  # held-out images come from here on (disjoint from training indices)


@dataclass
class TrainFeaturesConfig:
    """Attribute net on the built-in data; defaults finish in well under two minutes on 2 CPU cores."""

    out: str = "outputs/feature_net"  # local directory or s3:// prefix
    output: str | None = None  # alias of `out` (the spelling precompute uses); wins when set
    image_size: int = 32
    max_objects: int = 2
    background: str = "white"
    data_seed: int = 0
    width: int = 32
    cell_dim: int = 32  # per-cell feature size; FID features are 9 * cell_dim = 288-d
    steps: int = 900
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    noise_std: float = 0.03  # augmentation: Gaussian pixel noise (in [0,1] units), random per image up to this
    shift_px: int = 1  # augmentation: random translation of up to this many pixels
    blur_prob: float = 0.3  # augmentation: fraction of images blurred (half of them twice)
    colour_jitter: float = 0.04  # augmentation: max per-channel gain/offset change
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    eval_images: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        if self.output is not None:
            self.out, self.output = self.output, None
        if self.steps < 0:
            raise ConfigError(f"steps: must be >= 0, got {self.steps}")
        for name in ("batch_size", "eval_images", "width", "cell_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.blur_prob <= 1.0:
            raise ConfigError(f"blur_prob: must be in [0, 1], got {self.blur_prob}")
        try:
            BuiltinSpec(self.image_size, self.max_objects, self.data_seed, self.background)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def _augment(x: torch.Tensor, cfg: TrainFeaturesConfig, gen: torch.Generator) -> torch.Tensor:
    """x: [B,3,H,W] in [0,1] -> augmented copy (shift, blur, colour jitter, noise), still in [0,1]."""
    b, _, h, w = x.shape
    if cfg.shift_px > 0:
        s = cfg.shift_px
        padded = F.pad(x, (s, s, s, s), mode="replicate")  # [B,3,H+2s,W+2s]
        dy, dx = (int(v) for v in torch.randint(0, 2 * s + 1, (2,), generator=gen))
        x = padded[:, :, dy : dy + h, dx : dx + w]  # one shift per batch is enough variety per step
    if cfg.blur_prob > 0:
        # Generated / VAE-decoded images are soft: blur once or twice (a 3x3 binomial each time).
        kernel = torch.tensor([0.25, 0.5, 0.25])
        k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)  # [B,3,H,W]
        blurred2 = F.conv2d(F.pad(blurred, (1, 1, 1, 1), mode="replicate"), k2, groups=3)  # [B,3,H,W]
        u = torch.rand(b, generator=gen).view(b, 1, 1, 1)
        x = torch.where(u < cfg.blur_prob / 2, blurred2, torch.where(u < cfg.blur_prob, blurred, x))
    if cfg.colour_jitter > 0:
        # Small per-channel gain and offset: decoded colours are never exact.
        j = cfg.colour_jitter
        gain = 1 + (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * j
        offset = (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * j
        x = x * gain + offset
    if cfg.noise_std > 0:
        sigma = torch.rand(b, 1, 1, 1, generator=gen) * cfg.noise_std
        x = x + sigma * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_feature_net(cfg: TrainFeaturesConfig) -> str:
    """Train the attribute net, report held-out accuracy, save with `save_feature_net`; returns the output path."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = BuiltinSpec(cfg.image_size, cfg.max_objects, cfg.data_seed, cfg.background)
    net = BuiltinAttributeNet(
        image_size=cfg.image_size,
        width=cfg.width,
        cell_dim=cfg.cell_dim,
        num_shapes=len(SHAPES),
        num_colours=len(COLOURS),
        num_sizes=len(SIZES),
    ).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(cfg.warmup_steps, 1)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(cfg.steps - warm, 1)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.monotonic()
    bar = tqdm(range(cfg.steps), desc="train-features", disable=not cfg.progress or None, dynamic_ncols=True)
    ema = None
    for step in bar:
        idx = rng.integers(0, TRAIN_RANGE, cfg.batch_size)
        batches = [render_batch(int(i), int(i) + 1, spec) for i in idx]
        images = np.concatenate([b["image"] for b in batches])  # [B,H,W,3]
        objects = np.concatenate([b["objects"] for b in batches])  # [B,M,4]
        x = _augment(images_to_unit(images), cfg, gen)  # [B,3,H,W] in [0,1]
        _, logits = net(x)
        loss = attribute_loss(logits, cell_targets(objects, net.num_shapes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{ema:.4f}")
    bar.close()
    train_s = time.monotonic() - t0

    net.eval()
    held = render_batch(HELDOUT_START, HELDOUT_START + cfg.eval_images, spec)
    acc = attribute_accuracies(net, held["image"], held["objects"])
    meta = {
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
        "steps": cfg.steps,
        "train_seconds": round(train_s, 2),
        "final_loss": ema,
        "data": {
            "image_size": cfg.image_size,
            "max_objects": cfg.max_objects,
            "seed": cfg.data_seed,
            "background": cfg.background,
        },
        "config": to_dict(cfg),
    }
    out = _save(net, cfg.out, meta)
    summary = " ".join(f"{k}={acc[k]:.3f}" for k in ("shape", "colour", "size", "position", "object", "scene"))
    print(
        f"train-features: {cfg.steps} steps in {train_s:.1f}s; held-out accuracy on {cfg.eval_images} images: "
        f"{summary} -> {out}",
        flush=True,
    )
    return out


def _save(net: BuiltinAttributeNet, out: str, meta: dict) -> str:
    """The net (save_feature_net layout) published to `out` (local or s3://) in one step."""
    return storage.publish_dir(out, lambda d: save_feature_net(net, d, metadata=meta))
