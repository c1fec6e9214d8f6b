"""Named model presets (the DiT reference table, the MM-DiT depth grid, ADM U-Nets) and the model factory."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ditcore.models.dit import DiT, DiTConfig
from ditcore.models.mmdit import MMDiT, MMDiTConfig
from ditcore.models.unet import UNet, UNetConfig

ModelConfig = DiTConfig | MMDiTConfig | UNetConfig

_ARCHS: dict[str, tuple[type, type]] = {
    "dit": (DiTConfig, DiT),
    "mmdit": (MMDiTConfig, MMDiT),
    "unet": (UNetConfig, UNet),
}
_CONFIGS = tuple(cls for cls, _ in _ARCHS.values())

# DiT paper Table 1: (depth, hidden size, heads) per size.
_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

# ADM U-Nets sized for small latents: (model_channels, res blocks per level). ADM's layout (Dhariwal & Nichol
# Sec. 3: scale-shift norm, 64 channels per head, attention at the low resolutions) on 3 levels, channel_mult
# (1, 2, 2), self-attention at downsampling 2 and 4 (16x16 and 8x8 of a 32x32 latent, 4x4 and 2x2 of the 8x8
# built-in one) and in the middle block, so one name works at latent 8, 16 and 32; sizes differ in width (and L in
# blocks per level) only. "-text" variants take the MM-DiT presets' text features (384-d, 77 tokens).
_UNET_SIZES = {"S": (64, 2), "B": (128, 2), "L": (192, 3)}


def _build_presets() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    for size, (depth, hidden, heads) in _DIT_SIZES.items():
        for patch in (2, 4, 8):
            presets[f"DiT-{size}/{patch}"] = DiTConfig(
                depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch
            )
    # Tiny presets for tests and the CPU quickstart.
    presets["DiT-T/2"] = DiTConfig(depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8)
    presets["DiT-T/4"] = DiTConfig(depth=2, hidden_size=64, num_heads=4, patch_size=4, input_size=8)
    # MM-DiT scaling grid: one number per model (SD3 section 5.1: hidden 64*depth, depth heads of dim 64).
    for depth in range(1, 25):
        presets[f"MMDiT-d{depth}"] = MMDiTConfig(depth=depth, hidden_size=64 * depth, num_heads=depth)
    tiny_text = {"text_dim": 32, "pooled_dim": 32, "max_text_len": 16}
    presets["MMDiT-T"] = MMDiTConfig(depth=2, hidden_size=64, num_heads=4, input_size=8, **tiny_text)
    presets["MMDiT-T-flux"] = MMDiTConfig(
        depth=1, num_single_blocks=2, hidden_size=64, num_heads=4, input_size=8, pos_embed="rope", **tiny_text
    )
    for size, (channels, blocks) in _UNET_SIZES.items():
        presets[f"UNet-{size}"] = UNetConfig(hidden_size=channels, num_res_blocks=blocks)
        presets[f"UNet-{size}-text"] = UNetConfig(
            hidden_size=channels, num_res_blocks=blocks, num_classes=0, text_dim=384, pooled_dim=384, max_text_len=77
        )
    # Tiny U-Nets for tests and the CPU quickstart: 2 levels (8x8 -> 4x4), attention at 4x4 and in the middle.
    tiny_unet = {
        "hidden_size": 32,
        "channel_mult": (1, 2),
        "num_res_blocks": 1,
        "attention_levels": (1,),
        "head_channels": 32,
        "num_groups": 8,
        "input_size": 8,
    }
    presets["UNet-T"] = UNetConfig(**tiny_unet)
    presets["UNet-T-text"] = UNetConfig(**tiny_unet, num_classes=0, **tiny_text)
    return presets


#: name -> config; configs are frozen dataclasses, derive variants with build_model(name, **overrides)
PRESETS: dict[str, ModelConfig] = _build_presets()


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Plain JSON-able dict of a model config, including "arch" ("dit" | "mmdit" | "unet"); tuples become lists."""
    if not dataclasses.is_dataclass(cfg) or type(cfg) not in _CONFIGS:
        raise TypeError(f"config_to_dict: expected DiTConfig, MMDiTConfig or UNetConfig, got {type(cfg).__name__}")
    # Lists, not tuples: the dict then equals its own JSON round trip (checkpoints compare the two).
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def _coerce(cls: type, key: str, value: Any, default: Any) -> Any:
    """Type-check one field against the type of its default (ints accepted for floats); error names the key."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):  # U-Net level lists (channel_mult, attention_levels)
        ok = isinstance(value, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        if ok:
            value = tuple(value)
    else:  # pragma: no cover - every field has a scalar or tuple default
        ok = True
    if not ok:
        raise ValueError(f"{cls.__name__}.{key}: expected {type(default).__name__}, got {value!r}")
    return value


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of config_to_dict; unknown keys, wrong types or a missing/unknown "arch" raise ValueError naming it."""
    if not isinstance(data, dict):
        # ValueError, not TypeError: callers (checkpoint loader, job config checks) catch ValueError.
        raise ValueError(f"model config must be a dict, got {type(data).__name__}")  # noqa: TRY004
    arch = data.get("arch")
    if arch not in _ARCHS:
        raise ValueError(f"model config key 'arch' must be one of {sorted(_ARCHS)}, got {arch!r}")
    cls = _ARCHS[arch][0]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {k: _coerce(cls, k, v, fields[k].default) for k, v in data.items()}
    return cls(**kwargs)


def resolve_config(name_or_config: str | ModelConfig | dict, **overrides: Any) -> ModelConfig:
    """Preset name, config dataclass or dict (with "arch") -> config with overrides applied."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(f"unknown model preset {name_or_config!r}; known presets: {', '.join(PRESETS)}")
        cfg = PRESETS[name_or_config]
    elif isinstance(name_or_config, dict):
        cfg = config_from_dict(name_or_config)
    elif isinstance(name_or_config, _CONFIGS):
        cfg = name_or_config
    else:
        raise TypeError(f"build_model: expected a preset name, config or dict, got {type(name_or_config).__name__}")
    if overrides:
        d = config_to_dict(cfg)
        for k in overrides:
            if k not in d:
                raise ValueError(f"{type(cfg).__name__}: unknown override key {k!r}; known: {sorted(d)}")
        d.update(overrides)
        cfg = config_from_dict(d)
    return cfg


def build_model(name_or_config: str | ModelConfig | dict, **overrides: Any) -> nn.Module:
    """Build a DiT, MMDiT or UNet from a preset name, a config dataclass or a dict with "arch", plus overrides."""
    cfg = resolve_config(name_or_config, **overrides)
    return _ARCHS[cfg.arch][1](cfg)
