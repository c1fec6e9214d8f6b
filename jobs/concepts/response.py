"""The steering response curve: the share of samples the built-in attribute net reads as the target colour,
as a function of the steering strength alpha, on captions that do not name that colour (same prompts and seeds
at every alpha). The rate on captions that DO name the colour (unsteered) is the prompted reference.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from jobs.progress import progress


def _colour_share(net, images: np.ndarray, colour: int) -> float:
    from ditcore.metrics.features import predict_objects

    objs = predict_objects(net, images)
    return float(np.mean([any(o["colour"] == colour for o in img) for img in objs])) if objs else 0.0


def _prompts(pipe, concept: str, num_samples: int, with_concept: bool) -> dict[str, torch.Tensor]:
    from jobs.concepts.extract import colour_words
    from pipelines.latents.reader import load_latents_numpy

    rows = load_latents_numpy(
        pipe.manifest_uri, limit=max(8 * num_samples, 512), columns=["caption", "text_emb", "text_mask", "text_pooled"]
    )
    keep = [i for i, c in enumerate(rows["caption"]) if (concept in colour_words(str(c))) == with_concept]
    keep = keep[:num_samples]
    if not keep:
        raise ValueError(f"no caption {'names' if with_concept else 'avoids'} {concept!r} in the first rows")
    return {
        "text_emb": torch.from_numpy(rows["text_emb"][keep].astype(np.float32)),
        "text_mask": torch.from_numpy(rows["text_mask"][keep].astype(bool)),
        "text_pooled": torch.from_numpy(rows["text_pooled"][keep].astype(np.float32)),
    }


def response_net(pipe) -> Any:
    """The built-in attribute net that scores the response curve; ValueError when the checkpoint cannot have one
    (not text-conditioned: the curve compares prompts with and without the colour; no attribute net). `ditscale
    concepts --response` calls it before extracting anything."""
    from ditcore.metrics.features import load_feature_net
    from pipelines.infra import storage

    if pipe.conditioning != "text":
        raise ValueError("--response needs a text-conditioned checkpoint (it prompts with and without the colour)")
    m = pipe.manifest
    if m is None or m.fid is None or not m.fid.feature_net:
        raise ValueError("the data set records no attribute net (manifest fid.feature_net)")
    with storage.local_copy_scope(m.fid.feature_net) as local:
        net = load_feature_net(local).eval()
    if not hasattr(net, "attributes"):
        raise ValueError(f"{m.fid.feature_net} is not the built-in attribute net")
    return net


def steering_response(
    pipe,
    concept: str,
    alphas: Sequence[float],
    *,
    num_samples: int = 64,
    sampler: str = "dpmpp-2m",
    steps: int = 20,
    guidance: float = 1.0,
    layer: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """{"curve": [{"alpha", "share"}], "prompted_share", ...} for a text checkpoint on built-in data."""
    from ditcore.data.builtin import COLOUR_NAMES
    from pipelines.generation import SamplerSettings

    if concept not in COLOUR_NAMES:
        raise ValueError(f"the response curve is measured for built-in colours {COLOUR_NAMES}, got {concept!r}")
    net = response_net(pipe)
    colour = COLOUR_NAMES.index(concept)
    seeds = list(range(seed, seed + num_samples))
    base = SamplerSettings(sampler=sampler, steps=steps, guidance=guidance)
    cond = _prompts(pipe, concept, num_samples, with_concept=False)
    curve = []
    t0 = time.time()
    for k, alpha in enumerate(alphas):
        steer = {"concept": concept, "alpha": float(alpha), "layer": layer} if alpha else None
        s = SamplerSettings(**{**base.__dict__, "steer": steer})
        images = pipe.generate(cond, seeds[: cond["text_emb"].shape[0]], s, batch_size=64)
        curve.append({"alpha": float(alpha), "share": _colour_share(net, images, colour)})
        share = curve[-1]["share"]
        progress(
            "concepts",
            f"response alpha={alpha:g} ({k + 1}/{len(alphas)}): {concept} share {share:.3f}, {time.time() - t0:.0f}s",
        )
    prompted = _prompts(pipe, concept, num_samples, with_concept=True)
    ref = pipe.generate(prompted, seeds[: prompted["text_emb"].shape[0]], base, batch_size=64)
    return {
        "concept": concept,
        "curve": curve,
        "prompted_share": _colour_share(net, ref, colour),
        "num_samples": int(cond["text_emb"].shape[0]),
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        "layer": layer,
    }


def response_plot(result: dict[str, Any], path: str) -> None:
    """alpha vs share PNG, with the prompted reference as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = [p["alpha"] for p in result["curve"]]
    s = [p["share"] for p in result["curve"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(a, s, "o-", label=f"steered towards {result['concept']}")
    ax.axhline(result["prompted_share"], ls="--", c="gray", label=f"caption names {result['concept']} (alpha 0)")
    ax.set_xlabel("alpha")
    ax.set_ylabel(f"share read as {result['concept']}")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
