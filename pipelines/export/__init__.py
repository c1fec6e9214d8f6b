"""Export ditcore checkpoints to other libraries' formats (diffusers: see to_diffusers and docs/export.md)."""

from pipelines.export.to_diffusers import (
    EXPORT_META,
    ExportError,
    align_dit_time_embedding,
    check_exportable,
    convert_model,
    export_to_diffusers,
    load_exported,
    read_export_record,
    scheduler_for,
    unsupported_options,
)

__all__ = [
    "EXPORT_META",
    "ExportError",
    "align_dit_time_embedding",
    "check_exportable",
    "convert_model",
    "export_to_diffusers",
    "load_exported",
    "read_export_record",
    "scheduler_for",
    "unsupported_options",
]
