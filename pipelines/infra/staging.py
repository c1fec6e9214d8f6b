"""A local directory written whole or not at all: built in a hidden sibling folder, then swapped into place."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sibling(out: Path, suffix: str) -> Path:
    return out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.{suffix}"


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh empty hidden folder beside `out` to build into (its parent is created).

    When the block finishes, the folder replaces `out`: an existing `out` (folder or file) is first moved aside,
    so the rename is atomic, then deleted. When the block raises, the folder is deleted and `out` is untouched.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = _sibling(out, "old")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        elif old is not None:
            old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
