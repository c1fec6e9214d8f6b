"""Latent data sets: the manifest contract (`manifest.py`) and the one reader (`reader.py`)."""

from pipelines.latents.manifest import LatentDatasetError, Manifest
from pipelines.latents.reader import (
    data_files,
    load_fid_stats,
    load_latents_numpy,
    load_null_text,
    read_failures,
    read_latents,
    read_manifest,
    to_model_space,
)

__all__ = [
    "LatentDatasetError",
    "Manifest",
    "data_files",
    "load_fid_stats",
    "load_latents_numpy",
    "load_null_text",
    "read_failures",
    "read_latents",
    "read_manifest",
    "to_model_space",
]
