"""A compact image classifier for real-data sets (Fashion-MNIST classes, emoji categories).

Use: "accuracy of generated samples" — train it on the real train split, then score class-conditional
samples against the labels they were generated for (`classification_accuracy`). Its penultimate layer
(`.features`, `feature_dim` wide) also serves as a fast FID feature net for these small data sets; it is saved
and loaded with `save_feature_net` / `load_feature_net` (arch "image-classifier") like the other feature nets.

Inputs follow the feature-net convention (`ditcore.metrics.inception.images_to_unit`): uint8 [B,H,W,3] or
float [B,3,H,W] in [-1,1]; other sizes are resized (bilinear, antialiased) to `image_size`. Train on images
prepared as the precompute prepares them (`ditcore.preprocess.to_rgb` + `center_crop_arr`), so that real and
generated images reach the net at the same size and in the same colour space.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ditcore.metrics.inception import _module_device, images_to_unit

CLASSIFIER_ARCH = "image-classifier"


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def conv_trunk(width: int, layers: Sequence[tuple[int, int]]) -> nn.Sequential:
    """3x3 conv-BN-ReLU layers from RGB: one per (channels as a multiple of `width`, stride)."""
    blocks, cin = [], 3
    for mult, stride in layers:
        blocks.append(_conv_bn(cin, mult * width, stride))
        cin = mult * width
    return nn.Sequential(*blocks)


class ImageClassifier(nn.Module):
    """Conv trunk (two stride-2 stages) -> global average pool -> `feature_dim` features -> class logits."""

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        width: int = 32,
        feature_dim: int = 128,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"got {len(classes)} class names for num_classes={num_classes}")
        if image_size < 8 or width < 1 or feature_dim < 1:
            raise ValueError(f"bad sizes: image_size={image_size} (>= 8), width={width}, feature_dim={feature_dim}")
        self.num_classes, self.image_size, self.width, self.feature_dim = num_classes, image_size, width, feature_dim
        self.classes = list(classes) if classes is not None else None
        w = width
        self.trunk = conv_trunk(w, [(1, 1), (1, 1), (2, 2), (2, 1), (4, 2), (4, 1)])
        self.embed = nn.Linear(4 * w, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.eval()

    @property
    def config(self) -> dict:
        """The config.json content that rebuilds this network."""
        cfg = {
            "arch": CLASSIFIER_ARCH,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }
        if self.classes is not None:
            cfg["classes"] = list(self.classes)
        return cfg

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float [B,3,H,W] in [0,1] -> (features [B,feature_dim], logits [B,num_classes])."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        h = self.trunk(x * 2 - 1)  # [B,4w,s/4,s/4]
        feats = F.relu(self.embed(h.mean(dim=(2, 3))))  # [B,feature_dim]
        return feats, self.head(feats)  # [B,feature_dim], [B,num_classes]

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] or float [B,3,H,W] in [-1,1] -> float32 [B,feature_dim] on CPU."""
        return self.forward(images_to_unit(images).to(_module_device(self)))[0].float().cpu()

    @torch.no_grad()
    def logits(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] or float [B,3,H,W] in [-1,1] -> float32 logits [B,num_classes] on CPU."""
        return self.forward(images_to_unit(images).to(_module_device(self)))[1].float().cpu()

    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Predicted class index per image, int64 [B]."""
        out = [self.logits(images[i : i + batch_size]).argmax(-1).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------- arrays


def as_rgb_uint8(images: np.ndarray, name: str = "images") -> np.ndarray:
    """uint8 [N,H,W], [N,H,W,1] or [N,H,W,3] -> uint8 [N,H,W,3] (grey replicated); ValueError naming `name`."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected [N,H,W], [N,H,W,1] or [N,H,W,3], got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{name}: no images")
    return arr


def _as_labels(labels: np.ndarray | Sequence[int], n: int, num_classes: int, name: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n:
        raise ValueError(f"{name}: expected {n} labels (one per image), got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{name}: expected integer labels, got dtype {lab.dtype}")
    bad = lab[(lab < 0) | (lab >= num_classes)]
    if len(bad):
        raise ValueError(f"{name}: {len(bad)} label(s) outside [0, {num_classes}), e.g. {int(bad[0])}")
    return lab.astype(np.int64)


def classification_accuracy(
    net: ImageClassifier, images: np.ndarray | torch.Tensor, labels: np.ndarray | Sequence[int], batch_size: int = 512
) -> dict:
    """{"accuracy", "count", "per_class": [acc or None per class], "confusion": [[true x predicted counts]]}."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        images = as_rgb_uint8(images)
    n = len(images)
    lab = _as_labels(labels, n, net.num_classes, "labels")
    pred = net.predict(images, batch_size)
    confusion = np.zeros((net.num_classes, net.num_classes), np.int64)
    np.add.at(confusion, (lab, pred), 1)
    per_class = [
        float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None for c in range(net.num_classes)
    ]
    return {
        "accuracy": float((pred == lab).mean()) if n else float("nan"),
        "count": int(n),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


# --------------------------------------------------------------------------------------------- training


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray | Sequence[int],
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | Sequence[int] | None = None,
    steps: int = 1200,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    image_size: int = 32,
    width: int = 32,
    feature_dim: int = 128,
    flip: bool = True,
    seed: int = 0,
    eval_every: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[ImageClassifier, dict]:
    """Train an ImageClassifier on uint8 images [N,H,W(,C)] + int labels; returns (net in eval mode, report).

    AdamW with a short linear warm-up and cosine decay; random horizontal flips when `flip`. The report has
    "steps", "train_seconds", "final_loss", "test" (`classification_accuracy` on the test arrays, if given)
    and "history" ([step, test accuracy] every `eval_every` steps, if > 0).
    """
    x_all = as_rgb_uint8(images, "images")
    n_cls = int(num_classes) if num_classes is not None else (len(classes) if classes is not None else None)
    if n_cls is None:
        n_cls = int(np.max(np.asarray(labels))) + 1
    y_all = _as_labels(labels, len(x_all), n_cls, "labels")
    if (test_images is None) != (test_labels is None):
        raise ValueError("give both test_images and test_labels, or neither")
    if test_images is not None:
        test_images = as_rgb_uint8(test_images, "test_images")
        _as_labels(test_labels, len(test_images), n_cls, "test_labels")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    torch.manual_seed(seed)
    net = ImageClassifier(n_cls, image_size=image_size, width=width, feature_dim=feature_dim, classes=classes).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min((step - warm) / max(steps - warm, 1), 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(seed)
    history: list[list[float]] = []
    ema, t0, eval_s = None, time.monotonic(), 0.0
    # Epoch-wise permutations: every image is seen once per epoch, in a seeded order.
    order, pos = rng.permutation(len(x_all)), 0
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(x_all)), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        x = images_to_unit(x_all[idx])  # [b,3,H,W] in [0,1]
        if flip:
            mask = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[mask] = x[mask].flip(-1)
        _, logits = net(x)
        loss = F.cross_entropy(logits, torch.from_numpy(y_all[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if eval_every > 0 and test_images is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            t_eval = time.monotonic()
            net.eval()
            acc = classification_accuracy(net, test_images, test_labels)["accuracy"]
            net.train()
            eval_s += time.monotonic() - t_eval
            history.append([step + 1, acc])
            if log is not None:
                log(f"step {step + 1}/{steps} loss {ema:.4f} test accuracy {acc:.4f}")
    net.eval()
    report: dict = {
        "steps": steps,
        "train_seconds": round(time.monotonic() - t0 - eval_s, 2),
        "final_loss": ema,
        "batch_size": batch_size,
        "train_images": len(x_all),
    }
    if test_images is not None:
        report["test"] = classification_accuracy(net, test_images, test_labels)
    if history:
        report["history"] = history
    return net, report
