"""Diffusion Transformer models: DiT (class-conditional) and MM-DiT (text-conditional), presets and factory."""

from ditcore.models.dit import DiT, DiTConfig
from ditcore.models.mmdit import MMDiT, MMDiTConfig
from ditcore.models.presets import (
    PRESETS,
    ModelConfig,
    build_model,
    config_from_dict,
    config_to_dict,
    resolve_config,
)

__all__ = [
    "DiT",
    "DiTConfig",
    "MMDiT",
    "MMDiTConfig",
    "ModelConfig",
    "PRESETS",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "resolve_config",
]
