"""Typed configuration: dataclasses built from plain dicts, with errors that name the bad key.

Pure Python on purpose (no yaml, no argparse): the YAML loading and the command line live in the
layers above and hand plain dicts down to `from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Union


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check/convert `value` against the annotation `tp`; `where` is the dotted key for errors."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error names the bad key inside it
            return _convert(options[0], value, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        if args:
            return {
                _convert(args[0], k, f"{where}.{k}"): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()
            }
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # Allow "1e18"-style strings that YAML 1.1 reads as str.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (bool, int, float)):  # run.name=0001 or =2024 on the command line reads as a number
            raise ConfigError(
                f"{where}: expected a string, got the number or boolean {value!r}; to give text that reads as one, "
                f'quote it: {where}=\'"..."\' on the command line, {where.rsplit(".", 1)[-1]}: "..." in YAML'
            )
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict | None, *, where: str = "") -> Any:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError naming the key."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise ConfigError(f"unknown config key(s): {keys} (valid keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, key)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"missing required config key(s): {', '.join(f'{where}.{m}' if where else m for m in missing)}"
        )
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:  # ArithmeticError: a check dividing by a zero setting
        raise ConfigError(
            f"{where or cls.__name__}: {type(exc).__name__ + ': ' if isinstance(exc, ArithmeticError) else ''}{exc}"
        ) from exc
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-dict view of a (nested) dataclass, JSON-serialisable."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_value(text: str) -> Any:
    """Parse an override value: JSON literal (numbers, true/false/null, lists, objects), else the raw string."""
    lowered = text.strip()
    if lowered in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[lowered]
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        try:
            return float(lowered)  # e.g. "1e18" is not JSON-invalid but "1E+18" etc. stay numbers
        except ValueError:
            return text


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of `data` with `a.b.c=value` overrides applied (creating nested mappings as needed)."""
    out = json.loads(json.dumps(data)) if data else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = parse_value(raw)
    return out


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Human-readable `dotted.key: a -> b` lines for every leaf where two nested dicts differ, in key order."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def merge(base: dict | None, update: dict | None) -> dict:
    """Deep copy of `base` with `update` merged in: nested mappings merge key by key, anything else replaces."""
    out = json.loads(json.dumps(base or {}))
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = json.loads(json.dumps(value)) if isinstance(value, (dict, list)) else value
    return out


def check_ints(cfg: Any, keys: tuple[str, ...] | list[str], minimum: int) -> None:
    """Raise ValueError naming `<Class>.<key>` unless every field in `keys` is an int (not a bool) >= minimum."""
    for key in keys:
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            bound = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            raise ValueError(f"{type(cfg).__name__}.{key} must be {bound}, got {v!r}")
