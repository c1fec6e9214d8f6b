"""Diffusion models: DiT (class-conditional), MM-DiT (text-conditional), the ADM U-Net baseline, presets, factory."""

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
from ditcore.models.unet import UNet, UNetConfig

__all__ = [
    "PRESETS",
    "DiT",
    "DiTConfig",
    "MMDiT",
    "MMDiTConfig",
    "ModelConfig",
    "UNet",
    "UNetConfig",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "resolve_config",
]
