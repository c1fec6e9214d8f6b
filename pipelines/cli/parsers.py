"""The argument parser every `ditscale <command>` starts from."""

from __future__ import annotations

import argparse
import inspect
from typing import Any, Callable


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the error names the value; argparse adds the option and exits 2)."""
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    v = _int_at_least(text, 1)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {v}")
    return v


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
    return v


def command_parser(
    command: str, description: str, *, show_defaults: bool = False, **kwargs: Any
) -> argparse.ArgumentParser:
    """ArgumentParser(prog="ditscale <command>"); `show_defaults` appends each option's default to its help."""
    if show_defaults:
        kwargs["formatter_class"] = argparse.ArgumentDefaultsHelpFormatter
    return argparse.ArgumentParser(prog=f"ditscale {command}", description=description, **kwargs)


def checkpoint_command_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parser of `ditscale <command> CHECKPOINT`: option defaults in --help, the checkpoint as the positional."""
    p = command_parser(command, description, show_defaults=True)
    p.add_argument("checkpoint", help="checkpoint directory (local or s3://)")
    return p


def options_for(target: Callable[..., Any], ns: argparse.Namespace, **given: Any) -> dict[str, Any]:
    """Keyword arguments for `target` (a function or a dataclass) from the parsed options of the same names.

    Each keyword parameter of `target` the namespace has is taken from it; `given` adds or replaces
    arguments whose option is spelt differently (`--parent-run` -> parent_run_id) or needs converting.
    """
    names = [
        n
        for n, p in inspect.signature(target).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and hasattr(ns, n)
    ]
    return {**{n: getattr(ns, n) for n in names}, **given}
