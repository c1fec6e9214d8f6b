"""Checks that config dataclasses of several layers share. Standard library only: serve/ imports it too."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable


def check_positive(
    obj: object,
    names: Iterable[str],
    message: str = "{name} must be >= 1, got {value}",
    error: type[Exception] = ValueError,
) -> None:
    """Raise `error` for the first attribute of `obj` named in `names` whose value is below 1.

    `message` is formatted with the attribute's `name` and `value`, so each config keeps its own wording.
    """
    for name in names:
        value = getattr(obj, name)
        if value < 1:
            raise error(message.format(name=name, value=value))


# Why a blank caption or prompt is refused: to a text model the empty prompt is its unconditional input.
BLANK_PROMPT = (
    "a text-conditioned model needs a caption (the empty prompt is its unconditional input, which guidance "
    "compares against)"
)


def is_blank_prompt(text: object) -> bool:
    """Whether a caption or prompt is empty or whitespace only (the HTTP API, `sample` and the precompute refuse it).
    Control and format characters count as blank too: a byte-order mark or a zero-width space is dropped by the
    text encoder's tokenizer, so such a caption is the empty prompt to the model."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in str(text))
