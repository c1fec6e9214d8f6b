"""`ditscale flops MODEL`: parameters, MACs and FLOPs of one model as JSON (1 multiply-add = 2 FLOPs)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from ditcore.config import ConfigError, apply_overrides
from ditcore.flops import flops_summary
from ditcore.models import resolve_config
from pipelines.cli.parsers import command_parser, positive_int


def text_tokens(cfg, tokens: int | None) -> int | None:
    """Text tokens for the FLOPs of a text-conditioned model (MM-DiT, text U-Net), None for class models."""
    return tokens if (cfg.arch == "mmdit" or int(getattr(cfg, "text_dim", 0) or 0) > 0) else None


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale flops`."""
    p = command_parser(
        "flops",
        "Print params, forward_macs, forward_flops (= 2 MACs) and train_flops_per_image "
        "(= 3 x forward FLOPs) of a preset as JSON.",
    )
    p.add_argument("model", help="preset name, e.g. DiT-XL/2 or MMDiT-d12 (see `ditscale models`)")
    p.add_argument(
        "--latent-size", type=positive_int, default=None, help="latent height = width (default: the preset's)"
    )
    p.add_argument(
        "--text-tokens", type=positive_int, default=None, help="text tokens for MM-DiT (default: max_text_len)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set num_single_blocks=4 (repeatable)",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale flops`."""
    args = build_parser().parse_args(argv)
    try:
        overrides = apply_overrides({}, args.set)
        if args.latent_size is not None:
            overrides["input_size"] = args.latent_size
        cfg = resolve_config(args.model, **overrides)
    except (ConfigError, ValueError, TypeError) as e:
        print(f"ditscale flops: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(flops_summary(cfg, text_tokens(cfg, args.text_tokens)), indent=2))
    return 0
