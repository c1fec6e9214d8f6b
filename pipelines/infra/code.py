"""What a record says about the code that made it and where it ran: fingerprints of source code, and the software
and machine of a process (`environment`).

A fingerprint hashes the files' syntax trees with docstrings dropped (comments and formatting never reach the
tree), so an edit of the documentation leaves it alone while any change to what the code does changes it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import os
import platform
from collections.abc import Iterable
from pathlib import Path

from pipelines.infra.config_files import REPO_ROOT

# The code that decides what a training run learns and how its budget points are scored: the models, objectives,
# samplers and metrics (ditcore), the training loop and plan (jobs/train, jobs/distill), the evaluation of points
# (jobs/evaluation, jobs/scaling/points.py), and what they call to read latents, drop text, sample and decode.
# Storage, tracking and Ray plumbing are left out: they move bytes, they do not change them.
TRAINING_CODE = (
    "ditcore",
    "jobs/train",
    "jobs/distill",
    "jobs/evaluation",
    "jobs/scaling/points.py",
    "pipelines/latents",
    "pipelines/generation.py",
    "pipelines/encoders/text.py",
    "pipelines/datasets/images.py",
    "pipelines/encoders/vae.py",
    "pipelines/precompute/encode.py",
    "pipelines/checkpoint_extras.py",
)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def source_fingerprint(files: Iterable[str], root: Path = REPO_ROOT) -> str:
    """16 hex digits over the syntax trees (no docstrings, comments or formatting) of `files`, paths relative to
    `root`, in the order given, written out the same on every supported Python (`_stable_dump`; `ast.dump`'s text
    differs between versions)."""
    h = hashlib.sha256()
    for rel in files:
        tree = _strip_docstrings(ast.parse((root / rel).read_text(), filename=rel))
        h.update(rel.encode() + b"\0" + _stable_dump(tree).encode() + b"\0")
    return h.hexdigest()[:16]


def _stable_dump(node: object) -> str:
    """A syntax tree as text the same on every Python the project supports: fields that are empty (None, []) are
    left out, since newer versions add such fields (3.12's `type_params`) and print them differently (3.13)."""
    if isinstance(node, ast.AST):
        fields = [f"{k}={_stable_dump(v)}" for k, v in ast.iter_fields(node) if v is not None and v != []]
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return "[" + ",".join(_stable_dump(v) for v in node) + "]"
    return repr(node)


def _training_files(root: Path) -> list[str]:
    files = []
    for entry in TRAINING_CODE:
        path = root / entry
        if not path.exists():
            raise FileNotFoundError(f"training code fingerprint: {path} does not exist (TRAINING_CODE under {root})")
        found = [path] if path.is_file() else sorted(path.rglob("*.py"))
        files += [str(p.relative_to(root)) for p in found]
    return files


@functools.lru_cache(maxsize=None)
def training_code_fingerprint(root: Path | None = None) -> str:
    """The fingerprint of TRAINING_CODE's Python files under `root` (default: where the imported `ditcore` package
    lives): recorded in every training run's result.json (`code`), so a run reused by a later invocation can be told
    apart from one this code would train. Computed once per process (the code a process runs is the code it
    imported)."""
    if root is None:
        import ditcore

        root = Path(ditcore.__file__).resolve().parents[1]
    return source_fingerprint(_training_files(root), root)


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows of it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _versions() -> dict[str, str | None]:
    """Python, torch, numpy and Ray versions of this process (they do not change while it runs)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "ray": _version("ray"),
    }


def environment() -> dict[str, object]:
    """The software and machine of this process: Python, torch, numpy and Ray versions, the CPU model and count, and
    the GPU (None without one; the device's name once this process has used CUDA, else a count, so that asking starts no
    CUDA context). Recorded beside the numbers a run produced (result.json and report.json `env`, MLflow
    `env.*` tags): the same code and settings can round differently on another CPU, GPU or torch, so a number is
    checked against a run on the same environment."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = torch.cuda.device_count()  # NVML first: no CUDA initialisation, so a later fork stays safe
    gpu = torch.cuda.get_device_name() if torch.cuda.is_initialized() else f"{gpus} CUDA device(s)" if gpus else None
    return {**_versions(), "cpu": _cpu_model(), "cpus": cpus, "gpu": gpu}


# The software in an `environment()` record that can change a run's numbers besides its code (Ray moves data, it does
# not compute); the CPU and GPU can too, but a cluster's nodes may differ in them, so they are recorded, not compared.
SOFTWARE = ("python", "torch", "numpy")


def other_software(recorded: dict | None, here: dict | None = None) -> dict[str, str]:
    """The SOFTWARE versions in a recorded `env` that differ from `here`'s (default: this process's), as recorded ({}
    for a record without one). Versions are compared without their local build label (torch `2.13.0+cpu` and
    `2.13.0+cu126` are one release): a driver without GPUs may well run the CPU build of its workers' torch, and the
    hardware is recorded, not compared."""
    rec = recorded or {}
    here = _versions() if here is None else here
    return {k: rec[k] for k in SOFTWARE if rec.get(k) and _release(rec[k]) != _release(here.get(k))}


def software_versions() -> dict[str, str | None]:
    """This process's SOFTWARE versions: the entry a training process adds to the software that trained a run's
    weights (result.json and state.json `software`)."""
    here = _versions()
    return {k: here[k] for k in SOFTWARE}


def software_besides(result: dict) -> dict[str, str]:
    """The SOFTWARE versions other than this process's among everything that trained a finished run: its
    result.json `software` (every process that took its steps, the checkpoint it resumed or branched from included),
    else its `env` (a record written before that list); name -> the versions, ' / '-joined. {} for {}."""
    records = result.get("software") or ([result["env"]] if result.get("env") else [])
    return merged_versions(other_software(rec) for rec in records)


def merged_versions(versions: Iterable[dict]) -> dict[str, str]:
    """Name -> every distinct version among `versions` (each name -> a version, or several ' / '-joined, as
    `software_besides` gives), sorted and ' / '-joined; SOFTWARE order."""
    found: dict[str, set[str]] = {}
    for one in versions:
        for k, v in one.items():
            found.setdefault(k, set()).update(str(v).split(" / "))
    return {k: " / ".join(sorted(found[k])) for k in SOFTWARE if k in found}


def _release(version: object) -> str:
    return str(version).split("+", 1)[0]


def software_words(versions: dict) -> str:
    """'torch 2.12.0; here torch 2.13.0+cpu' for {'torch': '2.12.0'}: recorded versions against this process's."""
    here = _versions()
    return f"{', '.join(f'{k} {v}' for k, v in versions.items())}; here {', '.join(f'{k} {here[k]}' for k in versions)}"


def env_tags(env: dict) -> dict[str, object]:
    """MLflow tags for an `environment()` record: `env.torch`, `env.cpu`, ... (a None value is left out)."""
    return {f"env.{k}": v for k, v in env.items() if v is not None}


def environment_words(env: dict) -> str:
    """`environment()` in one line: 'AMD EPYC 7B13, 2 CPUs, no GPU; Python 3.11.7, torch 2.13.0+cpu, ...'."""
    gpu = env.get("gpu") or "no GPU"
    software = ", ".join(
        f"{name} {env[key]}"
        for key, name in (("python", "Python"), ("torch", "torch"), ("numpy", "numpy"), ("ray", "Ray"))
        if env.get(key)
    )
    return f"{env.get('cpu')}, {env.get('cpus')} CPUs, {gpu}; {software}"
