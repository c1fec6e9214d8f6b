"""Files stored beside a checkpoint by later commands (never inside its weights): DPM-Solver-v3 EMS (`ditscale ems`)
and concept directions (`ditscale concepts`). safetensors only; written under a temporary name, then renamed /
uploaded, so a reader never sees half a file
(pipelines.infra.storage.write_bytes).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

from pipelines.infra import storage

CONCEPTS_FILE = "concepts.safetensors"


class StoredFileError(ValueError):
    """A file stored beside a checkpoint (EMS, concept directions) that is damaged or belongs to another model: the
    deployment's fault, not a request's (the HTTP service answers 500 and logs it; the CLIs name it and exit 2)."""


def ems_name(guidance: float) -> str:
    """EMS depend on the guidance scale they were taken at: ems.safetensors (w = 1) or ems_w<w>.safetensors, w to 6
    significant digits (guidances that agree that far share statistics). The w = 1 test is on those digits too: a
    guidance of 1.0000001 looked for ems_w1.safetensors, which `ditscale ems --guidance 1` (ems.safetensors) never
    writes."""
    w = f"{float(guidance):g}"
    return "ems.safetensors" if float(w) == 1.0 else f"ems_w{w}.safetensors"


def _write(uri: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    storage.write_bytes(uri, save({k: v.contiguous().cpu() for k, v in tensors.items()}, metadata=metadata))


def _read(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    data = storage.read_bytes(uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def save_ems(checkpoint: str, ems, guidance: float, info: dict) -> str:
    """Store EMS (ditcore.samplers.EMS) beside `checkpoint`; returns the file's URI."""
    uri = storage.join(checkpoint, ems_name(guidance))
    _write(uri, ems.to_dict(), {"guidance": repr(float(guidance)), "info": json.dumps(info)})
    return uri


def missing_ems(checkpoint: str, guidance: float) -> str | None:
    """What is missing for sampler 'dpmsolver-v3' at `guidance` beside `checkpoint`, and how to make it; None when
    its statistics file is there."""
    uri = storage.join(checkpoint, ems_name(guidance))
    if storage.exists(uri):
        return None
    return (
        f"sampler 'dpmsolver-v3' needs the model statistics {uri} (guidance {float(guidance):g}); compute them "
        f"with `ditscale ems {checkpoint} --guidance {float(guidance):g}`"
    )


def _read_checked(uri: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`_read`, with a file that is not safetensors named (StoredFileError) instead of a bare parser error."""
    try:
        return _read(uri)
    except OSError:  # storage errors (a missing file included) pass as they are
        raise
    except Exception as exc:  # safetensors' SafetensorError, a truncated header, ...
        problem = f"{type(exc).__name__}: {exc}"
        raise StoredFileError(f"{uri}: not a readable {what} file ({problem}); compute it again") from exc


def load_ems(checkpoint: str, guidance: float, latent_shape: tuple[int, ...] | None = None):
    """The EMS stored beside `checkpoint` for guidance scale `guidance`; FileNotFoundError says how to make them.
    A damaged file, or statistics whose shape does not broadcast to `latent_shape` (the model's [C, H, W]), is a
    StoredFileError naming the file."""
    from ditcore.samplers import EMS

    missing = missing_ems(checkpoint, guidance)
    if missing:
        raise FileNotFoundError(missing)
    uri = storage.join(checkpoint, ems_name(guidance))
    tensors, _ = _read_checked(uri, "DPM-Solver-v3 statistics")
    try:
        ems = EMS.from_dict(tensors)
    except (KeyError, ValueError, TypeError) as exc:
        raise StoredFileError(f"{uri}: damaged DPM-Solver-v3 statistics ({exc}); compute them again") from exc
    if latent_shape is not None:
        shape, target = tuple(ems.shape), tuple(int(x) for x in latent_shape)
        fits = len(shape) <= len(target) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(target)))
        if not fits:
            raise StoredFileError(
                f"{uri}: statistics of shape {list(shape)} do not fit this model's samples {list(target)}; they were "
                "computed for another model: compute them again for this checkpoint"
            )
    return ems


def save_concepts(checkpoint: str, directions: dict[str, torch.Tensor], layer: int, info: dict) -> str:
    """Store unit concept directions (name -> [D]) taken at block `layer` beside `checkpoint`."""
    uri = storage.join(checkpoint, CONCEPTS_FILE)
    _write(uri, dict(directions), {"layer": str(int(layer)), "info": json.dumps(info)})
    return uri


def load_concepts(checkpoint: str) -> tuple[dict[str, torch.Tensor], int] | None:
    """(directions, layer) stored beside `checkpoint`, or None when there are none."""
    uri = storage.join(checkpoint, CONCEPTS_FILE)
    if not storage.exists(uri):
        return None
    tensors, meta = _read_checked(uri, "concept directions")
    try:
        return tensors, int(meta["layer"])
    except (KeyError, ValueError) as exc:
        raise StoredFileError(
            f"{uri}: no valid 'layer' in its metadata ({exc!r}); run `ditscale concepts` again"
        ) from exc
