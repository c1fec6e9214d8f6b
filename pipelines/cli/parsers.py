"""The argument parser every `ditscale <command>` starts from."""

from __future__ import annotations

import argparse
from typing import Any


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
