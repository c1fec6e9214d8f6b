"""`ditscale sample`: draw an image grid from a checkpoint with any sampler and classifier-free guidance.

    ditscale sample --checkpoint DIR --sampler dpmpp-2m --steps 20 --guidance 4.0 --seed 0 \
        [--prompt TEXT | --label N ...] [--num 4] --out grid.png

Generation goes through the project's one pipeline (pipelines.generation): image i uses seed + i, so a grid
cell does not depend on --num and equals what the sampler service returns for the same seed and settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ditcore.checkpoint import CheckpointError
from ditcore.samplers import SAMPLERS, TIME_GRIDS
from pipelines.cli.parsers import command_parser, nonneg_float, nonneg_int, positive_int
from pipelines.generation import (
    DEFAULT_GUIDANCE,
    MAX_SEED,
    GenerationError,
    GenerationPipeline,
    SamplerSettings,
    image_grid,
)
from pipelines.infra import storage
from pipelines.validation import BLANK_PROMPT, is_blank_prompt


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale sample`."""
    p = command_parser("sample", "Sample an image grid from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (local or s3://)")
    p.add_argument("--sampler", default="dpmpp-2m", choices=SAMPLERS)
    p.add_argument(
        "--steps", type=positive_int, default=20, help="solver steps (model evaluations for 1-eval samplers)"
    )
    p.add_argument("--time-grid", default="default", choices=TIME_GRIDS)
    p.add_argument(
        "--guidance", type=nonneg_float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale (1 = off)"
    )
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("T_LO", "T_HI"),
        default=None,
        help="apply guidance only for t in [T_LO, T_HI]",
    )
    p.add_argument("--eta", type=nonneg_float, default=0.0, help="DDIM eta in [0, 1] (0 = deterministic; ddim only)")
    p.add_argument("--seed", type=nonneg_int, default=0, help=f"image i uses seed + i, at most {MAX_SEED}")
    p.add_argument("--num", type=positive_int, default=4, help="number of images")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="text prompt (text models; repeatable: image i uses prompt i mod the number given)",
    )
    cond.add_argument(
        "--label",
        type=int,
        action="append",
        default=None,
        help="class label (class models; repeatable; default: labels 0, 1, 2, ... in turn)",
    )
    p.add_argument("--out", default="grid.png", help="output PNG path")
    p.add_argument("--no-ema", action="store_true", help="use the raw model weights instead of the EMA")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    return p


def settings_of(args: argparse.Namespace) -> SamplerSettings:
    """The sampler settings named on the command line."""
    return SamplerSettings(
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        time_grid=args.time_grid,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
        eta=args.eta,
    )


def run(args: argparse.Namespace) -> Path:
    """Sample and write the grid; returns the output path."""
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    if args.seed + args.num - 1 > MAX_SEED:
        raise ValueError(f"--seed {args.seed} with --num {args.num}: the last seed is past {MAX_SEED}")
    if args.prompt is not None and any(is_blank_prompt(p) for p in args.prompt):
        raise ValueError(f"--prompt: empty; {BLANK_PROMPT}")
    if args.eta > 1:  # past 1 DDIM's noise outgrows the step's sigma: a NaN (black) grid
        raise ValueError(f"--eta {args.eta:g}: DDIM's eta is in [0, 1] (1: as much noise as DDPM)")
    if args.eta and args.sampler != "ddim":
        raise ValueError(f"--eta {args.eta:g}: only --sampler ddim uses it (got --sampler {args.sampler})")
    if args.device is not None:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:N)") from e
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device {args.device!r}: sampling runs on cpu or cuda[:N]")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device!r}: this torch has no usable CUDA device (use --device cpu)")
    storage.refuse_remote(args.out, "--out", "the grid")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: is a directory; give a .png file path")
    if not str(args.checkpoint).startswith("s3://") and out.resolve().is_relative_to(
        Path(args.checkpoint).expanduser().resolve()
    ):
        raise ValueError(f"--out {out}: inside the checkpoint {args.checkpoint}; write the grid elsewhere")
    if out.is_file() and out.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":  # an earlier grid may be replaced
        raise ValueError(f"--out {out}: exists and is not a PNG; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {out}: {out.parent} is not writable")
    pipe = GenerationPipeline.from_checkpoint(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    seeds = [args.seed + i for i in range(args.num)]
    if pipe.conditioning == "class":
        if args.prompt:
            raise ValueError("--prompt given but this checkpoint is a class-conditional model; use --label")
        labels = args.label or [i % pipe.num_classes for i in range(args.num)]  # the classes in turn
        bad = [y for y in labels if not 0 <= y < pipe.num_classes]
        if bad:
            raise ValueError(f"--label {bad[0]} out of range [0, {pipe.num_classes})")
        images = pipe.generate_labels([labels[i % len(labels)] for i in range(args.num)], seeds, settings_of(args))
    else:
        if args.label:
            raise ValueError("--label given but this checkpoint is a text model; use --prompt")
        if not args.prompt:
            raise ValueError("this checkpoint is a text-conditioned model: pass --prompt TEXT")
        prompts = [args.prompt[i % len(args.prompt)] for i in range(args.num)]
        images = pipe.generate_prompts(prompts, seeds, settings_of(args))
    from PIL import Image

    Image.fromarray(image_grid(images)).save(out, format="PNG")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: `ditscale sample ...` (argv excludes the word "sample")."""
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except (CheckpointError, GenerationError, ValueError, OSError) as e:  # OSError: missing file, unreachable s3
        print(f"ditscale sample: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
