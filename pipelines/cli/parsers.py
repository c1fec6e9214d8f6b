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
