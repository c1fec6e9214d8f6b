"""The argument parser every `ditscale <command>` starts from."""

from __future__ import annotations

import argparse
import inspect
from typing import Any, Callable


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
