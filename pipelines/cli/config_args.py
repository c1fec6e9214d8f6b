"""Command-line options shared by every config-driven command: `--config FILE`, `key.sub=value` overrides,
`--print-config`, and a `--help` that lists every config key with its default (generated from the dataclass)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import typing
from typing import Any, Sequence

from ditcore.config import ConfigError
from pipelines.cli.parsers import DefaultsRawDescriptionFormatter


def _type_name(tp: Any) -> str:
    name = getattr(tp, "__name__", None)
    if name and not typing.get_args(tp):
        return name
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _describe_pydantic(cls: type, prefix: str = "") -> list[str]:
    lines = []
    for name, f in cls.model_fields.items():  # type: ignore[attr-defined]
        default = "(required)" if f.is_required() else repr(f.get_default(call_default_factory=True))
        note = f"  # {f.description}" if f.description else ""
        lines.append(f"  {prefix}{name}: {_type_name(f.annotation)} = {default}{note}")
    return lines


def describe_keys(cls: type, prefix: str = "") -> list[str]:
    """`key: type = default` lines for every (nested) field of dataclass (or pydantic model) `cls`."""
    if not dataclasses.is_dataclass(cls) and hasattr(cls, "model_fields"):
        return _describe_pydantic(cls, prefix)
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        nested = tp if dataclasses.is_dataclass(tp) else (inner[0] if len(inner) == 1 else None)
        if nested is not None and isinstance(nested, type):
            if f.default is None:  # optional: absent unless a key of it is given, then with these defaults
                note = _field_comments(cls).get(f.name)
                lines.append(
                    f"  {key}: {nested.__name__} | None = None  # none unless a {key}.* key is set; then these"
                    + (f"; {note}" if note else "")
                )
            lines.extend(describe_keys(nested, key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        note = _field_comments(cls).get(f.name)
        lines.append(f"  {key}: {_type_name(tp)} = {default}" + (f"  # {note}" if note else ""))
    return lines


@functools.lru_cache(maxsize=None)
def _field_comments(cls: type) -> dict[str, str]:
    """{field: the comment that ends its line in the class's source} (what `0` or `None` means, units, ...)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (built in a REPL, frozen)
        return {}
    out: dict[str, str] = {}
    field_line = re.compile(r"^\s+(\w+)\s*:")
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT or not tok.line[: tok.start[1]].strip():
            continue  # a comment alone on its line
        text = tok.string.lstrip("#").strip()
        m = field_line.match(tok.line)
        if m and m.group(1) not in out and not text.startswith(("noqa", "type:", "fmt:", "pragma")):
            out[m.group(1)] = text
    return out


def _wrap_description(parser: argparse.ArgumentParser, width: int = 100) -> None:
    """The raw-description formatter (kept for the key listing) prints the description as given: wrap its
    paragraphs here."""
    if parser.description and "\n" not in parser.description:
        parser.description = textwrap.fill(parser.description, width)


def _overrides_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let `key=value` overrides come before, between and after the options (`distill CKPT --validate-only steps=3`):
    argparse's intermixed parsing, also when `parser` is a sub-command's (argparse calls its parse_known_args)."""
    plain = parser.parse_known_args
    busy = False

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        nonlocal busy
        if busy:  # the intermixed parser's own passes
            return plain(args, namespace)
        busy = True
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            busy = False

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, example: str = "") -> None:
    """--config, overrides and --print-config on `parser`; its epilog lists the keys of `cls` with defaults."""
    parser.add_argument("--config", help="YAML file with the config (configs/...)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides (values parse as JSON, else as strings)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    _overrides_anywhere(parser)
    parser.formatter_class = DefaultsRawDescriptionFormatter
    _wrap_description(parser)
    keys = "\n".join(describe_keys(cls))
    parser.epilog = (f"example: {example}\n\n" if example else "") + f"config keys ({cls.__name__}):\n{keys}"


def load_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config the parsed --config / overrides describe (ConfigError naming a bad key)."""
    from pipelines.infra.config_files import load_config

    return load_config(cls, args.config, args.overrides)


def print_config(cfg: Any) -> None:
    """The resolved config (a config dataclass or a plain dict) as YAML on stdout."""
    from ditcore.config import to_dict
    from pipelines.infra.config_files import to_yaml

    print(to_yaml(cfg if isinstance(cfg, dict) else to_dict(cfg)), end="")


def add_print_config(parser: argparse.ArgumentParser, *sections: tuple[str, type]) -> None:
    """--print-config on a flag-driven command; the epilog lists the keys of each (title, dataclass) section."""
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    parser.formatter_class = DefaultsRawDescriptionFormatter
    _wrap_description(parser)
    blocks = [f"{title} ({cls.__name__}):\n" + "\n".join(describe_keys(cls)) for title, cls in sections]
    parser.epilog = "\n\n".join(blocks) if blocks else None


def run_config_command(prog: str, cls: type, args: argparse.Namespace, run: Any, load: Any = None) -> int:
    """Load the config (`load(args)`, default `load_from_args`), honour --print-config, call `run(cfg)`; a
    ConfigError exits 2 with the key named."""
    try:
        cfg = load(args) if load is not None else load_from_args(cls, args)
        if args.print_config:
            print_config(cfg)
            return 0
        return int(run(cfg) or 0)
    except ConfigError as e:
        import sys

        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2


__all__: Sequence[str] = [
    "add_config_arguments",
    "add_print_config",
    "describe_keys",
    "load_from_args",
    "print_config",
    "run_config_command",
]
