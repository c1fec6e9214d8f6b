"""The built-in data's encoders as versioned files: the small VAE and the FID feature net the full quickstart uses.

Training them is deterministic on a given machine (three fresh-clone quickstarts on 2 CPU cores wrote the same
sha256 for both), so the repository ships the result: `assets/encoders/builtin/{vae,features}` plus
`manifest.json`, written by `make encoders` (`ditscale quickstart --ship-encoders`). Every FID of the built-in
grid is then measured with one fixed, checksummed network that anyone with the repository has, and a quickstart
spends its minutes on the sweep instead of retraining the same weights.

A shipped encoder is used only when its *fingerprint* equals the one this run would train:
- `config`: the fully resolved training config (`TrainVAEConfig` / `TrainFeaturesConfig`, defaults included),
  without the fields that do not change what is learned (output path, thread count, progress bar);
- `data`: a hash of the first built-in examples that config renders (images, captions, object tables);
- `code`: a hash of the training code's syntax trees (docstrings and comments dropped), so any change to the
  losses, models, data generator or schedules sends the quickstart back to training in-run.
Otherwise the stage trains as before and says why. The files are checked against the manifest's sha256 on every
copy; a mismatch is an error that names the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ditcore.config import differences
from ditcore.files import file_digest as sha256_file
from pipelines.infra import storage
from pipelines.infra.code import source_fingerprint
from pipelines.infra.config_files import REPO_ROOT

SHIPPED_DIR = REPO_ROOT / "assets" / "encoders" / "builtin"
MANIFEST = "manifest.json"
KINDS = ("vae", "features")
# Fields that change where or how fast an encoder is trained, not what it learns.
_VOLATILE = ("out", "output", "threads", "progress")
# The modules whose code decides each encoder's weights.
_CODE = {
    "vae": (
        "pipelines/encoders/train_vae.py",
        "pipelines/encoders/training.py",
        "ditcore/data/builtin.py",
        "ditcore/preprocess.py",
    ),
    "features": (
        "pipelines/encoders/train_features.py",
        "pipelines/encoders/training.py",
        "ditcore/data/builtin.py",
        "ditcore/metrics/features.py",
    ),
}
_DATA_EXAMPLES = 64


class ShippedEncoderError(RuntimeError):
    """A shipped encoder file is missing or differs from its manifest's sha256."""


def code_fingerprint(kind: str, root: Path = REPO_ROOT) -> str:
    """Hash of the syntax trees (no docstrings, no comments, no formatting) of the code that trains `kind`, the same
    on every supported Python."""
    return source_fingerprint(_CODE[kind], root)


def data_fingerprint(cfg: Any) -> str:
    """Hash of the first built-in examples the training config renders (images, captions, objects)."""
    from ditcore.data.builtin import BuiltinSpec, render_batch

    batch = render_batch(0, _DATA_EXAMPLES, BuiltinSpec(cfg.image_size, cfg.max_objects, cfg.data_seed, cfg.background))
    h = hashlib.sha256(np.ascontiguousarray(batch["image"]).tobytes())
    h.update("\n".join(batch["caption"].tolist()).encode())
    h.update(np.ascontiguousarray(batch["objects"]).tobytes())
    return h.hexdigest()[:16]


def training_config(cfg: Any) -> dict:
    """The resolved training config without the fields that do not change the weights."""
    from ditcore.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in _VOLATILE}


def fingerprint(kind: str, cfg: Any) -> dict | None:
    """What decides `kind`'s weights (config, data, code); None where the encoder trains on a source, not the
    built-in data (those are never shipped)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {KINDS}")
    if getattr(cfg, "source", None) is not None:
        return None
    return {"config": training_config(cfg), "data": data_fingerprint(cfg), "code": code_fingerprint(kind)}


def read_manifest(shipped_dir: Path = SHIPPED_DIR) -> dict:
    path = Path(shipped_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def match(kind: str, cfg: Any, shipped_dir: Path = SHIPPED_DIR) -> tuple[dict | None, str]:
    """(the manifest entry, "") when the shipped `kind` was trained with exactly this fingerprint, else
    (None, why not)."""
    fp = fingerprint(kind, cfg)
    if fp is None:
        return None, "it trains on a data source, not the built-in shapes"
    entry = read_manifest(shipped_dir).get(kind)
    if entry is None:
        return None, f"no shipped {kind} in {shipped_dir}"
    diff = differences(entry["fingerprint"], fp)
    if diff:
        return None, "the shipped one was trained differently (" + "; ".join(diff[:4]) + ")"
    return entry, ""


def verify(kind: str, entry: dict, directory: Path) -> None:
    """Every file of `entry` is in `directory` with its manifest sha256, else ShippedEncoderError naming it."""
    for name, want in entry["files"].items():
        path = Path(directory) / name
        if not path.is_file():
            raise ShippedEncoderError(f"shipped {kind}: {path} is missing (restore it with `git checkout -- {path}`)")
        got = sha256_file(path)
        if got != want:
            raise ShippedEncoderError(
                f"shipped {kind}: {path} has sha256 {got}, the manifest says {want}; restore it with "
                f"`git checkout -- {path}`, rewrite both with `make encoders`, or train in-run with "
                "`ditscale quickstart --train-encoders`"
            )


def install(kind: str, entry: dict, dest: Path, shipped_dir: Path = SHIPPED_DIR) -> dict:
    """Copy the shipped `kind` to `dest` (replacing it), checking every file's sha256 before and after."""
    src = Path(shipped_dir) / kind
    verify(kind, entry, src)
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in entry["files"]:
        shutil.copy2(src / name, tmp / name)
    verify(kind, entry, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return describe(kind, entry, "shipped", dest)


def weights_file(kind: str) -> str:
    return "diffusion_pytorch_model.safetensors" if kind == "vae" else "model.safetensors"


def describe(kind: str, entry: dict | None, source: str, path: Path) -> dict:
    """The stage result / report.json record of one encoder: where it came from and its weights' sha256."""
    rec = {"path": str(path), "source": source, "sha256": sha256_file(Path(path) / weights_file(kind))}
    if entry is not None:
        rec["shipped_sha256"] = entry["files"][weights_file(kind)]
        rec["trained_with"] = entry.get("trained_with")
    return rec


def write_entry(kind: str, cfg: Any, directory: Path, trained_with: dict, shipped_dir: Path = SHIPPED_DIR) -> dict:
    """Record the encoder trained into `directory` (= shipped_dir/kind) in the manifest; returns its entry."""
    fp = fingerprint(kind, cfg)
    if fp is None:
        raise ValueError(f"{kind}: only encoders of the built-in data are shipped")
    files = {p.name: sha256_file(p) for p in sorted(Path(directory).iterdir()) if p.is_file()}
    entry = {"fingerprint": fp, "files": files, "trained_with": trained_with}
    manifest = read_manifest(shipped_dir)
    manifest[kind] = entry
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    storage.write_bytes(str(Path(shipped_dir) / MANIFEST), text.encode())  # whole or not at all: every run reads it
    return entry
