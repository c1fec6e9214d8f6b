"""`ditscale sample`: draw an image grid from a checkpoint with any sampler and classifier-free guidance.

    ditscale sample --checkpoint DIR --sampler dpmpp-2m --steps 20 --guidance 4.0 --seed 0 \
        [--prompt TEXT | --label N ...] [--num 4] --out grid.png

Pixel-space checkpoints (config.json data.space == "pixel", or no data manifest and 1/3 input channels)
are decoded directly from [-1, 1]; latent checkpoints decode with the VAE named in the checkpoint's data
manifest (pipelines.vae). Sample i uses seed + i for its noise and its sampler noise, so a grid cell does
not depend on --num.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ditcore.checkpoint import CheckpointError, load_checkpoint
from ditcore.config import ConfigError, from_dict
from ditcore.objectives import ObjectiveConfig
from ditcore.samplers import SAMPLERS, TIME_GRIDS, make_generators, model_fn_from_model, noise_from_seeds, sample


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for `ditscale sample`."""
    p = argparse.ArgumentParser(prog="ditscale sample", description="Sample an image grid from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (local or s3://)")
    p.add_argument("--sampler", default="dpmpp-2m", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=20, help="solver steps (model evaluations for 1-eval samplers)")
    p.add_argument("--time-grid", default="default", choices=TIME_GRIDS)
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"), default=None,
                   help="apply guidance only for t in [T_LO, T_HI]")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--num", type=int, default=4, help="number of images")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--prompt", action="append", default=None, help="text prompt (text models; repeatable)")
    cond.add_argument("--label", type=int, action="append", default=None, help="class label (class models; repeatable)")
    p.add_argument("--out", default="grid.png", help="output PNG path")
    p.add_argument("--no-ema", action="store_true", help="use raw model weights instead of EMA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def _local_checkpoint(uri: str) -> str:
    """Local directory for a checkpoint URI (s3:// is downloaded to a temp dir)."""
    if uri.startswith("s3://"):
        from pipelines.infra import storage
        return storage.download_dir(uri, tempfile.mkdtemp(prefix="ditscale-ckpt-"))
    return uri


def _is_pixel_space(config: dict, in_channels: int) -> bool:
    data = config.get("data") or {}
    if data.get("space") is not None:
        return data["space"] == "pixel"
    return not data.get("manifest") and in_channels in (1, 3)


def _class_conditions(model, labels: list[int] | None, num: int) -> tuple[dict, dict]:
    num_classes = model.config.num_classes
    labels = labels if labels else list(range(num))
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise ValueError(f"--label {bad[0]} out of range [0, {num_classes})")
    y = torch.tensor([labels[i % len(labels)] for i in range(num)], dtype=torch.long)
    return {"y": y}, {"y": num_classes}


def _text_conditions(config: dict, prompts: list[str] | None, num: int) -> tuple[dict, dict]:
    if not prompts:
        raise ValueError("this checkpoint is a text-conditioned model: pass --prompt TEXT")
    from pipelines.latents.reader import load_null_text, read_manifest
    from pipelines.encoders.text import load_text_encoder

    manifest_uri = (config.get("data") or {}).get("manifest")
    if not manifest_uri:
        raise ValueError("config.json data.manifest is missing: cannot find the text encoder of a text model")
    manifest = read_manifest(manifest_uri)
    text = manifest.get("text") or {}
    if not text.get("encoder"):
        raise ValueError(f"{manifest_uri}/manifest.json has no text.encoder")
    encoder = load_text_encoder(text["encoder"])
    enc = encoder.encode([prompts[i % len(prompts)] for i in range(num)])
    cond = {k: torch.as_tensor(np.asarray(v)) for k, v in enc.items()}
    null = load_null_text(manifest_uri)
    if null is None:
        raise ValueError(f"{manifest_uri}: manifest has no null text embedding (text.null) for guidance")
    cond = {k: v.float() if v.is_floating_point() else v for k, v in cond.items()}
    null = {k: v.float() if v.is_floating_point() else v for k, v in null.items()}
    return cond, null


def _decode(config: dict, x0: torch.Tensor, pixel: bool) -> np.ndarray:
    """Model-space samples -> uint8 images [B, H, W, 3]."""
    if pixel:
        img = ((x0.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [B, C, H, W]
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        return img.permute(0, 2, 3, 1).cpu().numpy()
    from pipelines.latents.reader import read_manifest
    from pipelines.encoders.vae import decode_to_images, load_vae

    data = config.get("data") or {}
    manifest_uri = data.get("manifest")
    if not manifest_uri:
        raise ValueError("latent checkpoint without config.json data.manifest: cannot find its VAE")
    vae_info = read_manifest(manifest_uri).get("vae") or {}
    if not vae_info.get("path"):
        raise ValueError(f"{manifest_uri}/manifest.json has no vae.path")
    scale = data.get("scaling_factor", vae_info.get("scaling_factor", 1.0))
    shift = data.get("shift_factor", vae_info.get("shift_factor", 0.0))
    vae = load_vae(vae_info["path"], device=x0.device, revision=vae_info.get("revision"))
    with torch.no_grad():
        return decode_to_images(vae, x0, scale, shift or 0.0)


def image_grid(images: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] uint8 -> one [rows*H, cols*W, 3] image (cols = ceil(sqrt(B)))."""
    b, h, w, c = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    return grid


def run(args: argparse.Namespace) -> Path:
    """Sample and write the grid; returns the output path."""
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    ckpt = load_checkpoint(_local_checkpoint(args.checkpoint), use_ema=not args.no_ema, device=args.device)
    model, config = ckpt.model, ckpt.config
    try:
        obj = from_dict(ObjectiveConfig, config.get("objective") or {}, where="objective")
    except (ConfigError, ValueError) as e:
        raise ValueError(f"{args.checkpoint}/config.json: {e}") from e
    if tuple(model.cond_keys) == ("y",):
        if args.prompt:
            raise ValueError("--prompt given but this checkpoint is a class-conditional model; use --label")
        cond, null = _class_conditions(model, args.label, args.num)
    else:
        if args.label:
            raise ValueError("--label given but this checkpoint is a text model; use --prompt")
        cond, null = _text_conditions(config, args.prompt, args.num)
    cond = {k: v.to(args.device) for k, v in cond.items()}
    null = {k: torch.as_tensor(v).to(args.device) for k, v in null.items()}
    mc = model.config
    seeds = [args.seed + i for i in range(args.num)]
    noise = noise_from_seeds(seeds, (mc.in_channels, mc.input_size, mc.input_size), device=args.device)
    x0 = sample(
        model_fn_from_model(model),
        noise,
        process=obj.process,
        prediction=obj.prediction,
        sampler=args.sampler,
        steps=args.steps,
        time_grid=args.time_grid,
        cond=cond,
        uncond=null,
        guidance=args.guidance,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
        generators=make_generators([s + 10_000_019 for s in seeds]),  # sampler noise stream distinct from x_T
        eta=args.eta,
    )
    images = _decode(config, x0, _is_pixel_space(config, mc.in_channels))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(image_grid(images)).save(out, format="PNG")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: `ditscale sample ...` (argv excludes the word "sample")."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"ditscale sample: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
