"""Train a feature network: the built-in attribute net on the built-in shapes, or a class classifier on any source.

    ditscale data train-features [--config FILE] [key=value ...]      (or: python -m pipelines.train_features ...)
    ditscale data train-features source.kind=folder source.path=DIR test_source.kind=folder test_source.path=DIR2
    ditscale data classifier --source DIR/train --test DIR/test --out DIR      (train_source_classifier)

With `source` set (any `pipelines.sources.SourceConfig` with labels: class sub-folders, a parquet label column),
the net is `ditcore.metrics.classifier.ImageClassifier` trained on the images decoded as the precompute decodes
them; its test accuracy (on `test_source`, else on the last `eval_images` rows of the source, held out) is printed
and stored in config.json's "meta" and in report.json. It scores "class accuracy of generated samples" and its
penultimate layer is a FID feature net (arch "image-classifier").

Images are generated on the fly from `ditcore.data.builtin`; the net predicts shape (or "absent"), colour and
size for each cell of the 3x3 position grid. Light augmentation (one-pixel shifts, Gaussian noise, slight blur)
keeps the heads and features usable on generated images, which are never pixel-exact. The held-out attribute
accuracy is printed and stored in config.json's "meta" next to the weights (`save_feature_net`).
"""

from __future__ import annotations

import json
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
from pipelines.encoders.training import HELDOUT_START, TRAIN_RANGE, EncoderTrainingConfig, warmup_cosine
from pipelines.infra import storage
from pipelines.sources import SourceConfig


@dataclass
class TrainFeaturesConfig(EncoderTrainingConfig):
    """Attribute net on the built-in data; defaults finish in well under two minutes on 2 CPU cores.

    With `source` (a labelled one) a class classifier is trained on it instead of the built-in attribute net.
    """

    POSITIVE = ("batch_size", "eval_images", "width", "cell_dim")

    out: str = "outputs/feature_net"  # local directory or s3:// prefix
    test_source: SourceConfig | None = None  # its test split; None: hold out eval_images rows of `source`
    feature_dim: int = 128  # classifier feature size (source only)
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
        super().__post_init__()
        if not 0.0 <= self.blur_prob <= 1.0:
            raise ConfigError(f"blur_prob: must be in [0, 1], got {self.blur_prob}")


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
    if cfg.source is not None:
        return _train_on_source(cfg)
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
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, cfg.steps, 0.02))
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


# --------------------------------------------------------------------------------------- any labelled source


def _labelled(source: SourceConfig | str, image_size: int, limit: int | None, what: str) -> dict:
    from pipelines.datasets.images import load_source_images

    data = load_source_images(source, image_size, limit)
    where = data["source"].path or data["source"].kind
    unlabelled = int((data["label"] < 0).sum())
    if unlabelled:
        raise ValueError(
            f"{what} {where}: {unlabelled} of {len(data['label'])} images have no class label "
            "(a folder needs class sub-folders, a parquet source a label column)"
        )
    if not data["num_classes"] or data["num_classes"] < 2:
        raise ValueError(f"{what} {where}: a classifier needs at least 2 classes, found {data['num_classes']}")
    return data


def train_source_classifier(
    source: SourceConfig | str,
    test: SourceConfig | str | None = None,
    out: str = "outputs/data/classifier",
    *,
    image_size: int = 32,
    steps: int = 1200,
    batch_size: int = 128,
    lr: float = 3e-3,
    width: int = 32,
    feature_dim: int = 128,
    limit: int | None = None,
    test_limit: int | None = None,
    holdout: int = 1000,
    seed: int = 0,
    log=print,
) -> dict:
    """Train the class classifier on a labelled source, measure its accuracy on the test split, save it.

    `test` None holds out the last `holdout` (at most a fifth) of the source's rows. Saves the net with
    `save_feature_net` (meta: test accuracy, counts, sources) plus report.json in `out`, in one step;
    returns the report ({"test_accuracy", "test_count", "per_class", "classes", "train_images", ...}).
    """
    from ditcore.metrics.classifier import train_classifier

    train = _labelled(source, image_size, limit, "source")
    if test is not None:
        held = _labelled(test, image_size, test_limit, "test source")
        if train["classes"] and held["classes"] and train["classes"] != held["classes"]:
            raise ValueError(f"test source classes {held['classes']} differ from the source's {train['classes']}")
        x, y, tx, ty = train["image"], train["label"], held["image"], held["label"]
        test_desc = str(held["source"].path)
    else:
        n_held = min(holdout, len(train["label"]) // 5)
        if n_held < 1:
            raise ValueError(
                f"source {train['source'].path}: too few images ({len(train['label'])}) to hold out a test set"
            )
        x, y = train["image"][:-n_held], train["label"][:-n_held]
        tx, ty = train["image"][-n_held:], train["label"][-n_held:]
        test_desc = f"last {n_held} rows of {train['source'].path} (held out)"
    num_classes = max(int(train["num_classes"]), int(ty.max()) + 1)
    classes = train["classes"] if train["classes"] and len(train["classes"]) == num_classes else None
    if log is not None:
        log(f"classifier: {len(y)} training images, {len(ty)} test images, {num_classes} classes")
    net, rep = train_classifier(
        x, y, num_classes=num_classes, classes=classes, test_images=tx, test_labels=ty, steps=steps,
        batch_size=batch_size, lr=lr, image_size=image_size, width=width, feature_dim=feature_dim, seed=seed,
        eval_every=max(steps // 4, 1), log=log,
    )  # fmt: skip
    report = {
        "out": out,
        "test_accuracy": rep["test"]["accuracy"],
        "test_count": rep["test"]["count"],
        "per_class": rep["test"]["per_class"],
        "classes": classes,
        "num_classes": num_classes,
        "train_images": len(y),
        "unreadable": {"source": train["failed"], "test": held["failed"] if test is not None else 0},
        "source": str(train["source"].path),
        "test_source": test_desc,
        "image_size": image_size,
        **{k: rep[k] for k in ("steps", "train_seconds", "final_loss", "batch_size", "history") if k in rep},
    }
    meta = {k: report[k] for k in ("test_accuracy", "test_count", "train_images", "source", "test_source", "steps")}

    def write(d) -> None:
        save_feature_net(net, d, metadata=meta)
        (d / "report.json").write_text(json.dumps({**report, "confusion": rep["test"]["confusion"]}, indent=2))

    report["out"] = storage.publish_dir(out, write)
    return report


def _train_on_source(cfg: TrainFeaturesConfig) -> str:
    rep = train_source_classifier(
        cfg.source, cfg.test_source, cfg.out, image_size=cfg.image_size, steps=max(cfg.steps, 1),
        batch_size=cfg.batch_size, lr=cfg.lr, width=cfg.width, feature_dim=cfg.feature_dim,
        holdout=cfg.eval_images, seed=cfg.seed, log=(lambda m: print(m, flush=True)) if cfg.progress else None,
    )  # fmt: skip
    print(
        f"train-features: classifier, {rep['steps']} steps in {rep['train_seconds']:.1f}s; test accuracy "
        f"{rep['test_accuracy']:.4f} on {rep['test_count']} images ({rep['test_source']}) -> {rep['out']}",
        flush=True,
    )
    return rep["out"]
