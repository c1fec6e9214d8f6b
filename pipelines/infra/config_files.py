"""Config files: YAML documents, `key.sub=value` overrides and merges, resolved into typed dataclasses.

The dict-level operations (`apply_overrides`, `merge`, `from_dict`) live in `ditcore.config`, which has no YAML;
this module adds the files. Every job builds its config through `load_config`, so a YAML key, a base mapping
and a command-line override are checked by the same code and a bad key is named the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from ditcore.config import ConfigError, apply_overrides, from_dict, merge

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """`path` as given when it exists, else relative to the repository (so `configs/...` works from any cwd)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    return REPO_ROOT / p if (REPO_ROOT / p).exists() else p


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping document is a ConfigError naming the file."""
    p = resolve_path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def compose(path: str | Path | None = None, base: dict | None = None, overrides: Sequence[str] = ()) -> dict:
    """The config dict of YAML file `path` (optional), with `base` merged over it and `overrides` applied last."""
    data = read_yaml(path) if path else {}
    return apply_overrides(merge(data, base), list(overrides))


def load_config(
    cls: type, path: str | Path | None = None, overrides: Sequence[str] = (), base: dict | None = None
) -> Any:
    """Build dataclass `cls` from a YAML file, a base mapping and `a.b=c` overrides; errors name the bad key."""
    return from_dict(cls, compose(path, base, overrides))


def to_yaml(data: Any) -> str:
    """YAML text of a plain (JSON-able) config dict, keys in definition order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
