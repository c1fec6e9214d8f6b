"""Data sets that need no files: the built-in synthetic shapes set (see `ditcore.data.builtin`)."""

from ditcore.data.builtin import (
    BACKGROUNDS,
    CLASS_NAMES,
    COLOURS,
    NUM_CLASSES,
    POSITIONS,
    SHAPES,
    SIZES,
    BuiltinItem,
    BuiltinSpec,
    array_to_objects,
    caption_for,
    objects_to_array,
    render,
    render_batch,
)

__all__ = [
    "BACKGROUNDS",
    "CLASS_NAMES",
    "COLOURS",
    "NUM_CLASSES",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "BuiltinItem",
    "BuiltinSpec",
    "array_to_objects",
    "caption_for",
    "objects_to_array",
    "render",
    "render_batch",
]
