"""The argument parser every `ditscale <command>` starts from."""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import sys
from typing import Any, Callable


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the error names the value; argparse adds the option and exits 2)."""
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


SEED_MAX = 2**32 - 1  # the generation seeds' range (pipelines.generation.MAX_SEED; evaluation derives more from it)


def seed_int(text: str) -> int:
    """argparse type: a seed in 0..2**32-1 (a larger one overflowed the int64 seeds derived from it, late)."""
    v = _int_at_least(text, 0)
    if v > SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SEED_MAX}, got {v}")
    return v


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    v = _int_at_least(text, 1)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {v}")
    return v


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (guidance scales, eta, learning rates)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (timeouts, intervals)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
    return v


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help lists each option's default once: appended to its help ("(default: 256)") unless the help already says
    what the default is; options without help text show their default alone. Flags (default False), required options
    and options whose default is None or empty show none (their help says what happens without them)."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        d = action.default
        return (
            bool(action.option_strings)
            and not action.required
            and d is not argparse.SUPPRESS
            and d is not None
            and d is not False
            and d != []
            and d != ""
        )

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)"


class DefaultsRawDescriptionFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """DefaultsHelpFormatter that keeps the description's and epilog's line breaks (tables, key listings)."""


def command_parser(command: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """ArgumentParser(prog="ditscale <command>") whose --help gives each option's default once
    (`DefaultsHelpFormatter`, unless `formatter_class` is given)."""
    kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
    return argparse.ArgumentParser(prog=f"ditscale {command}", description=description, **kwargs)


def add_subcommand(sub: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser (`sub` from add_subparsers) with the same --help as `command_parser`; its description is
    `description`, else the one-line `help` as a sentence."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        formatter_class=DefaultsHelpFormatter,
    )


def checkpoint_command_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parser of `ditscale <command> CHECKPOINT`: option defaults in --help, the checkpoint as the positional."""
    p = command_parser(command, description)
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


# OSErrors that mean the path given was wrong (bad input) rather than that a read or write failed at run time.
_BAD_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)


def command_error(command: str, exc: Exception) -> int:
    """Print `ditscale <command>: error: ...` on stderr and return the exit code the error calls for.

    2 for bad input, before or during the work: a bad value (ValueError) or a path that is not there or is the wrong
    kind. 1 for a failure at run time: any other OSError (a full disk, a permission, an unreachable s3 endpoint).
    """
    runtime = isinstance(exc, OSError) and not isinstance(exc, _BAD_PATH_ERRORS)
    msg = f"{exc.filename}: {exc.strerror}" if runtime and exc.filename and exc.strerror else str(exc)
    print(f"ditscale {command}: error: {msg}", file=sys.stderr)
    return 1 if runtime else 2
