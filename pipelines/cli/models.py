"""`ditscale models` (preset table) and `ditscale flops MODEL` (parameter / FLOPs JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from ditcore.flops import flops_summary
from ditcore.models import PRESETS, resolve_config


def _models_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ditscale models",
        description="Table of model presets with parameter counts and forward GFLOPs. GFLOPs follow the DiT "
        "paper's convention: forward multiply-adds (MACs) per image; training FLOPs per image are 6 x MACs.",
    )
    p.add_argument("--latent-size", type=int, default=32, help="latent height = width (32 for 256 px with an f8 VAE)")
    p.add_argument("--text-tokens", type=int, default=77, help="text tokens for MM-DiT presets (default 77)")
    p.add_argument("--json", action="store_true", help="print a JSON object name -> summary instead of a table")
    return p


def _flops_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ditscale flops",
        description="Print params, forward_macs, forward_flops (= 2 MACs) and train_flops_per_image "
        "(= 3 x forward FLOPs) of a preset as JSON.",
    )
    p.add_argument("model", help="preset name, e.g. DiT-XL/2 or MMDiT-d12 (see `ditscale models`)")
    p.add_argument("--latent-size", type=int, default=None, help="latent height = width (default: the preset's)")
    p.add_argument("--text-tokens", type=int, default=None, help="text tokens for MM-DiT (default: max_text_len)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set num_single_blocks=4 (repeatable)")
    return p


def _parse_override(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _models(argv: list[str]) -> int:
    args = _models_parser().parse_args(argv)
    rows = {}
    for name, cfg in PRESETS.items():
        cfg = resolve_config(cfg, input_size=args.latent_size) if args.latent_size % cfg.patch_size == 0 else None
        if cfg is None:
            continue
        tt = args.text_tokens if cfg.arch == "mmdit" else None
        rows[name] = {"arch": cfg.arch, "depth": cfg.depth + getattr(cfg, "num_single_blocks", 0),
                      "hidden": cfg.hidden_size, "heads": cfg.num_heads, "patch": cfg.patch_size,
                      "tokens": cfg.num_tokens, **flops_summary(cfg, tt)}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"latent {args.latent_size}x{args.latent_size}; MM-DiT with {args.text_tokens} text tokens; "
          "GFLOPs = forward multiply-adds per image (DiT paper convention)")
    header = f"{'model':<14} {'arch':<6} {'depth':>5} {'hidden':>6} {'heads':>5} {'patch':>5} {'tokens':>6} " \
             f"{'params(M)':>10} {'GFLOPs':>9} {'train TFLOP/img':>15}"
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(f"{name:<14} {r['arch']:<6} {r['depth']:>5} {r['hidden']:>6} {r['heads']:>5} {r['patch']:>5} "
              f"{r['tokens']:>6} {r['params'] / 1e6:>10.2f} {r['forward_macs'] / 1e9:>9.2f} "
              f"{r['train_flops_per_image'] / 1e12:>15.4f}")
    return 0


def _flops(argv: list[str]) -> int:
    args = _flops_parser().parse_args(argv)
    try:
        overrides = dict(_parse_override(s) for s in args.set)
        if args.latent_size is not None:
            overrides["input_size"] = args.latent_size
        cfg = resolve_config(args.model, **overrides)
    except (ValueError, TypeError) as e:
        print(f"ditscale flops: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(flops_summary(cfg, args.text_tokens if cfg.arch == "mmdit" else None), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: argv[0] is "models" or "flops" (the arguments after `ditscale`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "models":
        return _models(argv[1:])
    if argv and argv[0] == "flops":
        return _flops(argv[1:])
    print("usage: ditscale models [--latent-size N] | ditscale flops MODEL [--latent-size N] [--text-tokens L]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
