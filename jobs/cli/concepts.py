"""`ditscale concepts CKPT`: concept directions (difference of class means) and the PCA of a checkpoint's mid-layer
features, stored beside it; optionally the steering response curve of one colour (built-in data)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from pipelines.cli.parsers import checkpoint_command_parser, command_error, nonneg_float, positive_int, seed_int


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale concepts`."""
    p = checkpoint_command_parser(
        "concepts",
        "Extract a block's features over the checkpoint's captioned / labelled latents, plot their 2-D "
        "PCA coloured by concept (concepts_pca.png) and store the concept directions beside the checkpoint "
        "(concepts.safetensors), which the generation pipeline and the HTTP API (POST /v1/generate) use for "
        "steer={concept, alpha, layer}.",
    )
    p.add_argument("--num-samples", type=positive_int, default=1024)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--layer", type=int, default=None, help="block index (default: the middle block)")
    p.add_argument("--times", default="0.3,0.5,0.7", help="noise levels, fractions of the time range (1 = noise)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default=None, help="directory for the plot and JSON (default: the checkpoint, if local)")
    p.add_argument(
        "--response", default=None, metavar="COLOUR", help="also measure the steering response curve of this colour"
    )
    p.add_argument("--alphas", default="0,0.5,1,2,3", help="steering strengths of the response curve")
    p.add_argument("--response-samples", type=positive_int, default=64)
    p.add_argument("--sampler", default="dpmpp-2m", help="sampler of the response curve's images")
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--guidance", type=nonneg_float, default=1.0)
    return p


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"--{name}: {text!r} is not a comma-separated list of numbers") from e


def _run(args: argparse.Namespace) -> dict:
    import os

    from ditcore.steering import pca_2d
    from jobs.concepts.extract import ConceptSettings, class_separation, extract_features, pca_plot
    from pipelines.checkpoint_extras import save_concepts
    from pipelines.generation import GenerationPipeline
    from pipelines.infra import storage

    settings = ConceptSettings(
        args.num_samples, args.batch_size, args.layer, tuple(_floats(args.times, "times")), args.seed
    )
    settings.check()
    alphas = _floats(args.alphas, "alphas")
    if args.response:  # checked before the features are extracted and the directions written
        from ditcore.data.builtin import COLOUR_NAMES
        from ditcore.samplers import SAMPLERS
        from ditcore.steering import MAX_ALPHA

        if bad := [a for a in alphas if not abs(a) <= MAX_ALPHA]:
            raise ValueError(f"--alphas {args.alphas!r}: {bad} outside [-{MAX_ALPHA:g}, {MAX_ALPHA:g}]")

        if args.response not in COLOUR_NAMES:
            raise ValueError(f"--response {args.response!r}: one of the built-in colours {', '.join(COLOUR_NAMES)}")
        if args.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {args.sampler!r}: one of {', '.join(SAMPLERS)}")
    out_dir = args.out or (None if storage.is_s3(args.checkpoint) else args.checkpoint)
    if out_dir is None:
        raise ValueError("--out is required for an s3:// checkpoint (where to write the plot)")
    storage.refuse_remote(out_dir, "--out", "the plot")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):  # found after the extraction, as "File exists"
        raise ValueError(f"--out {out_dir!r}: is a file, not a directory")
    pipe = GenerationPipeline.from_checkpoint(args.checkpoint, device="cpu", text_encoder=False)
    if args.response:  # what the curve needs from the checkpoint, before anything is extracted or written
        from jobs.concepts.response import response_net

        response_net(pipe)
    feats, labels, layer, times = extract_features(pipe, settings)
    from ditcore.steering import concept_directions

    found = concept_directions(feats, labels)
    coords, _, explained = pca_2d(feats)
    os.makedirs(out_dir, exist_ok=True)
    plot = os.path.join(out_dir, "concepts_pca.png")
    pca_plot(coords.numpy(), labels, plot, f"block {layer} features, PCA ({len(labels)} rows)")
    info = {"layer": layer, "times": times, "rows": len(labels), "norm": found["norm"]}
    uri = save_concepts(args.checkpoint, found["directions"], layer, info)
    out = {
        "concepts": uri,
        "plot": plot,
        **info,
        "pca_explained": [float(v) for v in explained],
        "pca_separation": class_separation(coords, labels),
    }
    if args.response:
        from jobs.concepts.response import response_plot, steering_response

        pipe.__dict__.pop("_concepts", None)  # re-read: the directions were just written
        res = steering_response(
            pipe,
            args.response,
            alphas,
            num_samples=args.response_samples,
            sampler=args.sampler,
            steps=args.steps,
            guidance=args.guidance,
        )
        res["plot"] = os.path.join(out_dir, f"steering_{args.response}.png")
        response_plot(res, res["plot"])
        out["response"] = res
    from pipelines.infra import storage

    storage.write_bytes(os.path.join(out_dir, "concepts.json"), json.dumps(out, indent=2).encode())
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale concepts`."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from pipelines.generation import GenerationError

    try:
        out = _run(args)
    except (GenerationError, ValueError, OSError) as e:  # exit 2 for a bad value or path, 1 at run time
        return command_error("concepts", e)
    print(json.dumps(out, indent=2))
    return 0
