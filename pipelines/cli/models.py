"""`ditscale models`: table of model presets with parameters and GFLOPs per image."""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

from ditcore.flops import flops_summary
from ditcore.models import PRESETS, resolve_config
from pipelines.cli.flops import text_tokens
from pipelines.cli.parsers import command_parser, positive_int


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale models`."""
    p = command_parser(
        "models",
        "Table of model presets with parameter counts and forward GFLOPs. GFLOPs follow the DiT "
        "paper's convention: forward multiply-adds (MACs) per image; training FLOPs per image are 6 x MACs.",
    )
    p.add_argument(
        "--latent-size", type=positive_int, default=32, help="latent height = width (32 for 256 px with an f8 VAE)"
    )
    p.add_argument("--text-tokens", type=positive_int, default=77, help="text tokens for MM-DiT presets (default 77)")
    p.add_argument("--json", action="store_true", help="print a JSON object name -> summary instead of a table")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale models`."""
    args = build_parser().parse_args(argv)
    rows = {}
    for name, cfg in PRESETS.items():
        try:
            cfg = resolve_config(cfg, input_size=args.latent_size) if args.latent_size % cfg.patch_size == 0 else None
        except ValueError:  # e.g. a U-Net needs a latent size divisible by its downsampling: not at this size
            cfg = None
        if cfg is None:
            continue
        tt = text_tokens(cfg, args.text_tokens)
        rows[name] = {
            "arch": cfg.arch,
            "depth": cfg.depth + getattr(cfg, "num_single_blocks", 0),
            "hidden": cfg.hidden_size,
            "heads": cfg.num_heads,
            "patch": cfg.patch_size,
            "tokens": cfg.num_tokens,
            **flops_summary(cfg, tt),
        }
    if not rows:
        build_parser().error(f"--latent-size {args.latent_size}: no preset's patch size divides it")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"latent {args.latent_size}x{args.latent_size}; MM-DiT with {args.text_tokens} text tokens; "
        "GFLOPs = forward multiply-adds per image (DiT paper convention)"
    )
    header = (
        f"{'model':<14} {'arch':<6} {'depth':>5} {'hidden':>6} {'heads':>5} {'patch':>5} {'tokens':>6} "
        f"{'params(M)':>10} {'GFLOPs':>9} {'train TFLOP/img':>15}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:<14} {r['arch']:<6} {r['depth']:>5} {r['hidden']:>6} {r['heads']:>5} {r['patch']:>5} "
            f"{r['tokens']:>6} {r['params'] / 1e6:>10.2f} {r['forward_macs'] / 1e9:>9.2f} "
            f"{r['train_flops_per_image'] / 1e12:>15.4f}"
        )
    return 0
