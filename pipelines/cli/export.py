"""`ditscale export --diffusers CKPT OUT`: a checkpoint as a diffusers model directory (+ pipeline with a VAE)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from pipelines.cli.parsers import command_parser


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale export`."""
    p = command_parser(
        "export",
        "Export a checkpoint to diffusers: a DiT becomes "
        "DiTTransformer2DModel in a DiTPipeline with the manifest's VAE (or --vae; --no-vae: the model only), an "
        "MM-DiT SD3Transformer2DModel. "
        "Options diffusers cannot express are refused by name. See docs/export.md.",
    )
    p.add_argument(
        "--diffusers",
        nargs=2,
        metavar=("CKPT", "OUT"),
        required=True,
        help="checkpoint directory (local or s3://) and the output directory (local)",
    )
    vae = p.add_mutually_exclusive_group()
    vae.add_argument("--vae", default=None, help="VAE directory to bundle (default: the one the data manifest names)")
    vae.add_argument(
        "--no-vae",
        action="store_true",
        help="export the transformer (and scheduler) only, without a VAE or DiTPipeline",
    )
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return p


def _default_vae(ckpt: str, cache_root: Optional[str] = None) -> Optional[str]:
    """The VAE the checkpoint's data manifest names (an s3:// one fetched), None for a model without one (pixel
    space, no manifest). ValueError when it names one that cannot be bundled (a hub id, a folder that is gone): the
    export said nothing and wrote no DiTPipeline."""
    from pathlib import Path

    from ditcore.checkpoint import read_checkpoint_config
    from pipelines.infra import storage
    from pipelines.latents.manifest import Manifest

    manifest = (read_checkpoint_config(ckpt).get("data") or {}).get("manifest")
    if not manifest:
        return None
    path = Manifest.read(manifest).vae.path
    if not path:
        return None
    if storage.is_s3(path):
        # into the command's temp folder (removed after the export), apart from the checkpoint's copy there
        return storage.local_copy(path, os.path.join(cache_root, "vae") if cache_root else None)
    if Path(path).expanduser().is_dir():
        return str(Path(path).expanduser())
    raise ValueError(
        f"the data manifest's VAE {path!r} is not a local or s3:// directory, so it cannot be bundled: give --vae DIR, "
        "or --no-vae to export the transformer alone"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ditscale export`."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from ditcore.checkpoint import CheckpointError
    from pipelines.export import ExportError, export_to_diffusers
    from pipelines.export.to_diffusers import check_export_out
    from pipelines.infra import storage

    ckpt, out = args.diffusers
    if "://" in out:
        print(f"ditscale export: error: OUT {out!r}: must be a local directory (upload it afterwards)", file=sys.stderr)
        return 2
    if not storage.is_s3(ckpt) and storage.overlap(ckpt, out):
        print(
            f"ditscale export: error: OUT {out!r} overlaps the checkpoint {ckpt!r}: write the export elsewhere "
            "(--overwrite would replace the checkpoint)",
            file=sys.stderr,
        )
        return 2
    try:
        check_export_out(Path(out), args.overwrite)  # before an s3:// checkpoint is downloaded
        with tempfile.TemporaryDirectory(prefix="ditscale-export-") as tmp:
            local = storage.local_copy(ckpt, cache_root=tmp)
            vae = None if args.no_vae else (args.vae or _default_vae(local, tmp))
            record = export_to_diffusers(
                local, out, vae=vae, use_ema=not args.raw, overwrite=args.overwrite, source_uri=ckpt
            )
    except (ExportError, CheckpointError, ValueError, OSError) as e:  # OSError: exists, missing, unreachable s3
        print(f"ditscale export: error: {e}", file=sys.stderr)
        return 2
    for w in record.get("warnings", []):
        print(f"ditscale export: warning: {w}", file=sys.stderr)
    print(json.dumps({k: v for k, v in record.items() if k != "warnings"}, indent=2, default=str))
    return 0
