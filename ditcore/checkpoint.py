"""Checkpoint directories: safetensors weights + JSON, written atomically, loaded without unpickling.

Layout of `.../checkpoints/step_XXXXXXXX/`:
  model.safetensors        model weights
  ema.safetensors          EMA weights (only when an EMA was given)
  config.json              {"model": config_to_dict(...), "objective": {...}, "data": {...}, ...}
  state.json               step, images seen, FLOPs consumed, RNG / data position (caller's dict)
  optimizer.safetensors    optimizer state tensors, keyed "state.<param index>.<name>"
  optimizer.json           the rest of the optimizer state (param groups, non-tensor state)
  checkpoint.json          format version and the byte size of every file (detects truncation)
The directory is built under a hidden temporary name and renamed into place, so a crash never
leaves a loadable half-checkpoint. Local paths only; jobs/serve copy directories to/from s3.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ditcore.models import build_model, config_from_dict, config_to_dict

FORMAT_VERSION = 1
STEP_DIR_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not match the model config."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: model (eval mode), full config dict, state dict and the directory it came from."""

    model: nn.Module
    config: dict
    state: dict
    path: Path
    weights: str = "model.safetensors"


def step_dir(root: str | os.PathLike, step: int) -> Path:
    """root/step_XXXXXXXX (8-digit zero-padded step)."""
    return Path(root) / f"step_{int(step):08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
        f.flush()
        os.fsync(f.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"checkpoint: value of type {type(obj).__name__} is not JSON serialisable: {obj!r}")


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The ditcore model inside DDP / Ray Train / AveragedModel (.module) or torch.compile (._orig_mod) wrappers."""
    for _ in range(8):
        if hasattr(model, "config") and hasattr(model, "cond_keys"):
            break
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def _weights(obj: nn.Module | dict) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return unwrap_model(obj).state_dict()
    sd = dict(obj)
    # A raw AveragedModel state dict prefixes "module." and adds n_averaged.
    if "n_averaged" in sd and any(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items() if k.startswith("module.")}
    return sd


def _optimizer_split(optimizer: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer (or its index-keyed state_dict) -> (tensors for safetensors, JSON-able rest)."""
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict] = {}
    for idx, pstate in sd["state"].items():
        entry: dict[str, Any] = {}
        for key, val in pstate.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = val
                entry[key] = {"__tensor__": f"state.{idx}.{key}"}
            else:
                entry[key] = val
        state_json[str(idx)] = entry
    return tensors, {"state": state_json, "param_groups": sd["param_groups"]}


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    ema: nn.Module | dict | None = None,
    config: dict,
    state: dict,
    optimizer: torch.optim.Optimizer | dict | None = None,
) -> Path:
    """Write a checkpoint directory atomically (tmp dir + rename) and return its path.

    `optimizer` is an optimizer or a state dict in torch's index-keyed layout (e.g. an FSDP2 optimizer's
    gathered full state, re-keyed by parameter index), so sharded and unsharded runs write the same files.
    """
    directory = Path(directory)
    model = unwrap_model(model)
    config = dict(config)
    # config.json must rebuild exactly these weights: the model's own config is authoritative.
    true_cfg = config_to_dict(model.config)
    given = config.get("model")
    if dataclasses.is_dataclass(given) and not isinstance(given, type):
        given = config_to_dict(given)
    if given is not None and given != true_cfg:
        config["model_requested"] = given if isinstance(given, (dict, str)) else str(given)
    config["model"] = true_cfg
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _save_tensors(tmp / "model.safetensors", _weights(model))
        if ema is not None:
            _save_tensors(tmp / "ema.safetensors", _weights(ema))
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "state.json", state)
        if optimizer is not None:
            tensors, rest = _optimizer_split(optimizer)
            _save_tensors(tmp / "optimizer.safetensors", tensors)
            _write_json(tmp / "optimizer.json", rest)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        _write_json(tmp / "checkpoint.json", {"format_version": FORMAT_VERSION, "files": files})
        _fsync_dir(tmp)
        if directory.exists():
            # Replace an older write of the same step: move it aside first so the rename stays atomic.
            trash = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, trash)
            os.rename(tmp, directory)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from e


def _manifest(directory: Path) -> dict | None:
    """checkpoint.json, checked against the files present (sizes catch truncation)."""
    path = directory / "checkpoint.json"
    if not path.exists():
        return None  # written by another tool: rely on the per-file checks
    man = _read_json(path)
    files = man.get("files") if isinstance(man, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: missing 'files' table")
    problem = files_problem(
        files, lambda name: (directory / name).stat().st_size if (directory / name).is_file() else None
    )
    if problem:
        raise CheckpointError(f"{directory}/{problem}")
    return man


def files_problem(files: dict[str, int], size_of: Callable[[str], Optional[int]]) -> Optional[str]:
    """The first file of a checkpoint.json `files` table that is missing or not at its listed size, as
    "<name>: <what is wrong>"; None when all are intact. `size_of(name)` is the file's size, None when it is absent
    (a local stat here, a pyarrow filesystem's file info where checkpoints live on S3)."""
    for name, size in files.items():
        if name == "checkpoint.json":
            continue  # the manifest cannot list its own size (a remote re-save once listed the old one)
        actual = size_of(name)
        if actual is None:
            return f"{name}: missing (listed in checkpoint.json)"
        if actual != size:
            return f"{name}: size {actual} bytes, expected {size} (truncated or modified)"
    return None


def _load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors (truncated or corrupt?): {e}") from e


def _check_directory(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(f"{directory}: is a file, not a checkpoint directory")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    return directory


def verify_checkpoint_files(directory: str | os.PathLike) -> None:
    """CheckpointError naming the first file checkpoint.json lists that is missing or not at its size (a truncated
    copy), without reading any weights; nothing to check for a checkpoint without checkpoint.json."""
    _manifest(_check_directory(directory))


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    """config.json of a checkpoint directory (no weights are read)."""
    directory = _check_directory(directory)
    cfg = _read_json(directory / "config.json")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{directory / 'config.json'}: expected an object with a 'model' config")
    return cfg


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
            f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}"
            )
        if v.dtype != expected[k].dtype and not v.is_floating_point():
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {v.dtype}, model expects {expected[k].dtype}")
    model.load_state_dict(tensors, strict=True)


def load_checkpoint(
    directory: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Rebuild the model from config.json and load EMA (if present and use_ema) or model weights."""
    directory = _check_directory(directory)
    _manifest(directory)
    config = read_checkpoint_config(directory)
    state = _read_json(directory / "state.json")
    try:
        model = build_model(config_from_dict(config["model"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: invalid model config: {e}") from e
    name = "ema.safetensors" if use_ema and (directory / "ema.safetensors").exists() else "model.safetensors"
    path = directory / name
    _load_into(model, _load_tensors(path), path)
    model.to(device).eval()
    return Checkpoint(model=model, config=config, state=state, path=directory, weights=name)


def load_model_weights(directory: str | os.PathLike, model: nn.Module, *, which: str = "model") -> None:
    """Load model.safetensors (which="model") or ema.safetensors (which="ema") into an existing module."""
    directory = _check_directory(directory)
    if which not in ("model", "ema"):
        raise ValueError(f"load_model_weights: which must be 'model' or 'ema', got {which!r}")
    path = directory / f"{which}.safetensors"
    model = unwrap_model(model)
    _load_into(model, _load_tensors(path, next(model.parameters()).device), path)


def read_optimizer_state(directory: str | os.PathLike) -> dict:
    """The optimizer state dict saved by save_checkpoint, in torch's index-keyed layout (no pickle)."""
    directory = _check_directory(directory)
    tpath, jpath = directory / "optimizer.safetensors", directory / "optimizer.json"
    rest = _read_json(jpath)
    tensors = _load_tensors(tpath)
    if not isinstance(rest, dict) or "state" not in rest or "param_groups" not in rest:
        raise CheckpointError(f"{jpath}: expected keys 'state' and 'param_groups'")
    state: dict[int, dict] = {}
    for idx, entry in rest["state"].items():
        pstate = {}
        for key, val in entry.items():
            if isinstance(val, dict) and "__tensor__" in val:
                tkey = val["__tensor__"]
                if tkey not in tensors:
                    raise CheckpointError(f"{tpath}: missing tensor {tkey!r} referenced by optimizer.json")
                pstate[key] = tensors[tkey]
            else:
                pstate[key] = val
        state[int(idx)] = pstate
    return {"state": state, "param_groups": rest["param_groups"]}


def load_optimizer_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    """Restore optimizer state saved by save_checkpoint (safetensors + JSON, no pickle)."""
    sd = read_optimizer_state(directory)
    jpath = Path(directory) / "optimizer.json"
    state, groups = sd["state"], sd["param_groups"]
    current = optimizer.param_groups
    if len(groups) != len(current) or any(len(g["params"]) != len(c["params"]) for g, c in zip(groups, current)):
        raise CheckpointError(
            f"{jpath}: optimizer has {[len(c['params']) for c in current]} params per group, checkpoint has "
            f"{[len(g['params']) for g in groups]}"
        )
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{jpath}: optimizer state does not match the optimizer: {e}") from e


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """Highest root/step_XXXXXXXX directory that is complete (has config.json), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for p in root.iterdir():
        m = STEP_DIR_RE.match(p.name)
        if m and p.is_dir() and (p / "config.json").is_file():
            step = int(m.group(1))
            if best is None or step > best[0]:
                best = (step, p)
    return best[1] if best else None
