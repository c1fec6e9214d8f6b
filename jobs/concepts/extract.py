"""Mid-layer features of a checkpoint over its captioned or labelled latents: PCA and concept directions.

Concepts: the colour words of the captions (the built-in data set names colours, ditcore.data.builtin.COLOUR_NAMES),
else the class names (manifest classes, or the label numbers). Features are block `layer`'s image-token hidden
states averaged over tokens (ditcore.steering.capture_features), taken at a few noise levels of the data
(x_t = alpha x0 + sigma eps, fixed seed): every (row, time) pair is a sample of the class means and the PCA.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import numpy as np
import torch

from jobs.progress import progress


@dataclasses.dataclass(frozen=True)
class ConceptSettings:
    """What to extract."""

    num_samples: int = 1024
    batch_size: int = 128
    layer: int | None = None  # None: the middle block
    times: tuple[float, ...] = (0.3, 0.5, 0.7)  # fractions of the process's time range (0 data, 1 noise)
    seed: int = 0

    def check(self) -> None:
        """Errors name the bad value."""
        if self.num_samples < 2 or self.batch_size < 1:
            raise ValueError(f"num_samples must be >= 2 and batch_size >= 1, got {self.num_samples}, {self.batch_size}")
        bad = [t for t in self.times if not 0.0 <= t <= 1.0]
        if not self.times or bad:
            raise ValueError(f"times must be fractions in [0, 1], got {list(self.times)}")


def colour_words(caption: str) -> list[str]:
    """The colour names a built-in caption mentions, in order (repeats kept once)."""
    from ditcore.data.builtin import COLOUR_NAMES

    words = re.findall(r"[a-z]+", caption.lower())
    return list(dict.fromkeys(w for w in words if w in COLOUR_NAMES))


def _rows(pipe, settings: ConceptSettings) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    from pipelines.latents.reader import load_latents_numpy

    text = pipe.conditioning == "text"
    keys = ["text_emb", "text_mask", "text_pooled", "caption"] if text else ["label"]
    uri = pipe.data_uri("concept extraction")
    rows = load_latents_numpy(uri, limit=settings.num_samples, columns=["latent_mean", *keys])
    if not rows:
        raise ValueError(f"{pipe.manifest_uri}: no rows")
    if text:
        if "caption" not in rows:
            raise ValueError(f"{pipe.manifest_uri}: a text data set without captions: no concepts to extract")
        labels = [colour_words(str(c)) for c in rows["caption"]]
        if not any(labels):
            raise ValueError(f"{pipe.manifest_uri}: no caption names a colour (built-in data): no concepts")
    else:
        names = pipe.manifest.classes if pipe.manifest is not None and pipe.manifest.classes else None
        labels = [[names[int(y)] if names else str(int(y))] for y in rows["label"]]
    return rows, labels


def _cond(rows: dict[str, np.ndarray], sl: slice) -> dict[str, torch.Tensor]:
    if "label" in rows:
        return {"y": torch.from_numpy(rows["label"][sl].astype(np.int64))}
    return {
        "text_emb": torch.from_numpy(rows["text_emb"][sl].astype(np.float32)),
        "text_mask": torch.from_numpy(rows["text_mask"][sl].astype(bool)),
        "text_pooled": torch.from_numpy(rows["text_pooled"][sl].astype(np.float32)),
    }


@torch.no_grad()
def extract_features(pipe, settings: ConceptSettings) -> tuple[torch.Tensor, list[list[str]], int, list[float]]:
    """(features [N * T, D], concept labels per row, layer, times) of the pipeline's model on its data set."""
    from ditcore.processes import build_process
    from ditcore.steering import capture_features, mid_layer

    settings.check()
    rows, labels = _rows(pipe, settings)
    layer = mid_layer(pipe.model) if settings.layer is None else int(settings.layer)
    proc = build_process(pipe.objective.process)
    times = [float(proc.t_min) + f * (float(proc.t_max) - float(proc.t_min)) for f in settings.times]
    # Pixel-space data (no VAE: the pipeline sets no factors) is used as stored, like training does.
    shift, scale = getattr(pipe, "shift_factor", 0.0), getattr(pipe, "scaling_factor", 1.0)
    x0_all = (torch.from_numpy(rows["latent_mean"].astype(np.float32)) - shift) * scale
    g = torch.Generator().manual_seed(settings.seed)
    eps_all = torch.randn(x0_all.shape, generator=g)
    feats, out_labels = [], []
    t0 = time.time()
    with capture_features(pipe.model, layer) as captured:
        for k, t in enumerate(times):
            a, s = (float(v) for v in proc.coefficients(t)[:2])
            for start in range(0, x0_all.shape[0], settings.batch_size):
                sl = slice(start, start + settings.batch_size)
                x_t = (a * x0_all[sl] + s * eps_all[sl]).to(pipe.device)
                cond = {k: v.to(pipe.device) for k, v in _cond(rows, sl).items()}
                # Through the denoiser the samplers call (EDM preconditioning's c_in / c_noise, as in training and
                # sampling), so the features are those of inputs the network sees.
                pipe.model_fn(x_t, torch.full((x_t.shape[0],), t, device=pipe.device), **cond)
                out_labels += labels[sl]
            progress(
                "concepts",
                f"features at t={t:.3g} ({k + 1}/{len(times)}): {x0_all.shape[0]} rows, {time.time() - t0:.0f}s",
            )
        feats = torch.cat([f.cpu() for f in captured])
    return feats, out_labels, layer, times


def pca_plot(coords: np.ndarray, labels: list[list[str]], path: str, title: str) -> None:
    """Scatter of the 2-D PCA coordinates, coloured by each row's first concept (a built-in colour is drawn in it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ditcore.data.builtin import COLOURS

    first = [lab[0] if lab else "(none)" for lab in labels]
    fig, ax = plt.subplots(figsize=(6, 5))
    for name in sorted(set(first)):
        idx = [i for i, f in enumerate(first) if f == name]
        rgb = COLOURS.get(name)
        colour = None if rgb is None else tuple(c / 255 for c in rgb)
        ax.scatter(coords[idx, 0], coords[idx, 1], s=6, alpha=0.6, label=name, color=colour)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def class_separation(coords: torch.Tensor, labels: list[list[str]]) -> dict[str, Any]:
    """How well the 2-D PCA separates the first concepts: between-class / total variance of the coordinates."""
    first = [lab[0] if lab else "(none)" for lab in labels]
    x = coords.double()
    total = float(((x - x.mean(0)) ** 2).sum())
    between = 0.0
    for name in set(first):
        idx = torch.tensor([f == name for f in first])
        between += float(idx.sum()) * float(((x[idx].mean(0) - x.mean(0)) ** 2).sum())
    return {"between_over_total": between / max(total, 1e-12), "concepts": len(set(first))}
