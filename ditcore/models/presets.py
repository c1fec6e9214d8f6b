"""Named model presets (the DiT reference table plus the MM-DiT depth grid) and the model factory."""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from torch import nn

from ditcore.models.dit import DiT, DiTConfig
from ditcore.models.mmdit import MMDiT, MMDiTConfig

ModelConfig = Union[DiTConfig, MMDiTConfig]

_ARCHS: dict[str, tuple[type, type]] = {"dit": (DiTConfig, DiT), "mmdit": (MMDiTConfig, MMDiT)}

# DiT paper Table 1: (depth, hidden size, heads) per size.
_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def _build_presets() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    for size, (depth, hidden, heads) in _DIT_SIZES.items():
        for patch in (2, 4, 8):
            presets[f"DiT-{size}/{patch}"] = DiTConfig(depth=depth, hidden_size=hidden, num_heads=heads,
                                                       patch_size=patch)
    # Tiny presets for tests and the CPU quickstart.
    presets["DiT-T/2"] = DiTConfig(depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8)
    presets["DiT-T/4"] = DiTConfig(depth=2, hidden_size=64, num_heads=4, patch_size=4, input_size=8)
    # MM-DiT scaling grid: one number per model (SD3 section 5.1: hidden 64*depth, depth heads of dim 64).
    for depth in range(1, 25):
        presets[f"MMDiT-d{depth}"] = MMDiTConfig(depth=depth, hidden_size=64 * depth, num_heads=depth)
    presets["MMDiT-T"] = MMDiTConfig(depth=2, hidden_size=64, num_heads=4, input_size=8, text_dim=32, pooled_dim=32,
                                     max_text_len=16)
    presets["MMDiT-T-flux"] = MMDiTConfig(depth=1, num_single_blocks=2, hidden_size=64, num_heads=4, input_size=8,
                                          text_dim=32, pooled_dim=32, max_text_len=16, pos_embed="rope")
    return presets


#: name -> config; configs are frozen dataclasses, derive variants with build_model(name, **overrides)
PRESETS: dict[str, ModelConfig] = _build_presets()


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Plain JSON-able dict of a model config, including "arch" ("dit" | "mmdit")."""
    if not dataclasses.is_dataclass(cfg) or type(cfg) not in (DiTConfig, MMDiTConfig):
        raise TypeError(f"config_to_dict: expected DiTConfig or MMDiTConfig, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


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
    else:  # pragma: no cover - every field has a scalar default
        ok = True
    if not ok:
        raise ValueError(f"{cls.__name__}.{key}: expected {type(default).__name__}, got {value!r}")
    return value


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of config_to_dict; unknown keys, wrong types or a missing/unknown "arch" raise ValueError naming it."""
    if not isinstance(data, dict):
        raise ValueError(f"model config must be a dict, got {type(data).__name__}")
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
    elif isinstance(name_or_config, (DiTConfig, MMDiTConfig)):
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
    """Build a DiT or MMDiT from a preset name, a config dataclass or a dict with "arch", plus field overrides."""
    cfg = resolve_config(name_or_config, **overrides)
    return _ARCHS[cfg.arch][1](cfg)
