"""YAML config files plus `key.sub=value` command-line overrides, resolved into typed dataclasses."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from ditcore.config import ConfigError, apply_overrides, from_dict


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping document is a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None, overrides: Sequence[str] = ()) -> Any:
    """Build `cls` from an optional YAML file with `a.b=c` overrides applied; errors name the bad key."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(cls, data)
