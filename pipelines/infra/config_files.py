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


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: YAML keeps the last one silently, so
    `optim: {lr: 0.01}` followed later by `optim: {warmup_steps: 5}` lost the learning rate without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: its keys may be set again here (that is what a merge is for)
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader's own error names it ("found unhashable key")
            if key in seen:
                raise _DuplicateKey(f"key {key!r} given twice in one mapping (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """The YAML document `text` (from `where`, for the error); invalid YAML or a key given twice in one mapping
    is a ConfigError naming `where`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:  # one line: where and what, without YAML's excerpt of the text
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{where}: invalid YAML{at}: {what}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}") from exc


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping document is a ConfigError naming the file."""
    p = resolve_path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = parse_yaml(p.read_text(), str(p)) or {}
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
