"""Analytic parameter counts and forward cost of DiT / MM-DiT / U-Net configs.

Conventions (every figure says which): MACs are multiply-accumulates of the matmuls (linears,
convolutions, attention QK^T and AV); FLOPs = 2 x MACs; training FLOPs per image = 3 x forward FLOPs
(forward + backward of activations + backward of weights). The DiT paper's "Gflops" column is
forward MACs: DiT-XL/2 at 256 px (latent 32) is 118.6 G. Normalisations, activations, softmax and
elementwise ops are not counted (the same convention as torch.utils.flop_counter and the paper);
neither are biases, embedding lookups nor the U-Net's nearest-neighbour upsampling.
"""

from __future__ import annotations

from typing import Any

import torch

from ditcore.models.dit import DiTConfig
from ditcore.models.presets import ModelConfig, resolve_config
from ditcore.models.unet import UNetConfig, unet_plan

#: width of the sinusoidal timestep features fed to the timestep MLP
FREQ_DIM = 256


def _cfg(cfg: ModelConfig | str | dict, latent_size: int | None = None) -> ModelConfig:
    cfg = resolve_config(cfg)
    if latent_size is not None and latent_size != cfg.input_size:
        cfg = resolve_config(cfg, input_size=latent_size)
    return cfg


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def _unet_params(cfg: UNetConfig) -> int:
    """Parameters of a U-Net: stem, per-stage ResBlock / attention / resample, output head, embedders."""
    e, g = cfg.emb_dim, 2  # GroupNorm: gain and bias per channel
    stem, down, middle, up = unet_plan(cfg)
    total = _conv(cfg.in_channels, stem, 3) + g * stem + _conv(stem, cfg.out_channels, 3)  # stem, out norm + conv
    total += _linear(cfg.hidden_size, e) + _linear(e, e)  # timestep MLP (frequency width = model_channels)
    if cfg.text_dim:
        total += _linear(cfg.pooled_dim, e) + _linear(e, e)  # pooled-text MLP
    else:
        total += (cfg.num_classes + 1) * e  # label table incl. the null class
    for s in down + middle + up:
        c = s.channels
        if s.res_in:
            total += g * s.res_in + _conv(s.res_in, c, 3) + _linear(e, 2 * c) + g * c + _conv(c, c, 3)
            total += _conv(s.res_in, c, 1) if s.res_in != c else 0  # 1x1 skip when the width changes
        if s.attn:
            total += g * c + _linear(c, 3 * c) + _linear(c, c)  # self-attention
            if cfg.text_dim:
                total += g * c + _linear(c, c) + _linear(cfg.text_dim, 2 * c) + _linear(c, c)  # cross-attention
        if s.resample:
            total += _conv(c, c, 3)
    return total


def _unet_macs(cfg: UNetConfig, text_tokens: int) -> int:
    """Forward MACs of a U-Net per image: convs (H W C_in C_out k^2), linears, attention QK^T and AV."""
    e, s0 = cfg.emb_dim, cfg.input_size
    stem, down, middle, up = unet_plan(cfg)
    macs = s0 * s0 * 9 * (cfg.in_channels * stem + stem * cfg.out_channels)  # stem and output convs
    macs += cfg.hidden_size * e + e * e  # timestep MLP
    if cfg.text_dim:
        macs += cfg.pooled_dim * e + e * e  # pooled-text MLP
    for s in down + middle + up:
        c, n = s.channels, (s0 // s.ds) ** 2  # positions at the stage's input resolution
        if s.res_in:
            macs += n * 9 * (s.res_in * c + c * c) + e * 2 * c  # two 3x3 convs, embedding projection
            macs += n * s.res_in * c if s.res_in != c else 0  # 1x1 skip
        if s.attn:
            macs += n * 4 * c * c + 2 * n * n * c  # qkv + proj, QK^T + AV
            if cfg.text_dim:
                L = text_tokens
                macs += n * 2 * c * c + L * cfg.text_dim * 2 * c + 2 * n * L * c  # q + proj, kv, QK^T + AV
        if s.resample == "down":
            macs += (n // 4) * 9 * c * c  # stride-2 conv
        elif s.resample == "up":
            macs += (4 * n) * 9 * c * c  # conv after 2x upsampling
    return macs


def count_params(cfg: ModelConfig | str | dict) -> int:
    """Exact number of parameters of the model built from cfg (preset name, config or dict)."""
    cfg = _cfg(cfg)
    if isinstance(cfg, UNetConfig):
        return _unet_params(cfg)
    d, m, p = cfg.hidden_size, cfg.mlp_hidden, cfg.patch_size
    head = d // cfg.num_heads
    qk = 2 * head if cfg.qk_norm else 0
    total = _linear(cfg.in_channels * p * p, d)  # patch embed
    total += _linear(FREQ_DIM, d) + _linear(d, d)  # timestep MLP
    if getattr(cfg, "guidance_embed", False):
        total += _linear(FREQ_DIM, d) + _linear(d, d)  # guidance-scale MLP (distilled students)
    total += _linear(d, 2 * d) + _linear(d, p * p * cfg.out_channels)  # final layer
    mlp = _linear(d, m) + _linear(m, d)
    if isinstance(cfg, DiTConfig):
        total += (cfg.num_classes + 1) * d  # label table incl. the null class
        block = _linear(d, 6 * d) + _linear(d, 3 * d) + _linear(d, d) + mlp + qk
        return total + cfg.depth * block
    total += _linear(cfg.text_dim, d) + _linear(cfg.pooled_dim, d) + _linear(d, d)  # context + pooled MLP
    img = _linear(d, 6 * d) + _linear(d, 3 * d) + _linear(d, d) + mlp
    txt_full = img
    txt_pre = _linear(d, 2 * d) + _linear(d, 3 * d)
    for i in range(cfg.depth):
        pre_only = i == cfg.depth - 1 and cfg.num_single_blocks == 0
        total += img + (txt_pre if pre_only else txt_full) + 2 * qk
    single = _linear(d, 3 * d) + _linear(d, 3 * d + m) + _linear(d + m, d) + qk
    return total + cfg.num_single_blocks * single


def forward_macs(
    cfg: ModelConfig | str | dict, text_tokens: int | None = None, *, latent_size: int | None = None
) -> int:
    """Forward multiply-accumulates per image (DiT-paper "Gflops" convention); text_tokens defaults to max_text_len."""
    cfg = _cfg(cfg, latent_size)
    if isinstance(cfg, UNetConfig):
        return _unet_macs(cfg, cfg.max_text_len if text_tokens is None else int(text_tokens))
    d, m, p = cfg.hidden_size, cfg.mlp_hidden, cfg.patch_size
    n = cfg.num_tokens
    macs = n * cfg.in_channels * p * p * d  # patch embed
    macs += FREQ_DIM * d + d * d  # timestep MLP
    if getattr(cfg, "guidance_embed", False):
        macs += FREQ_DIM * d + d * d  # guidance-scale MLP (distilled students)
    macs += 2 * d * d + n * d * p * p * cfg.out_channels  # final adaLN + projection
    mlp = 2 * d * m  # per token
    if isinstance(cfg, DiTConfig):
        block = 6 * d * d + n * (3 * d * d + d * d + mlp) + 2 * n * n * d
        return macs + cfg.depth * block
    L = cfg.max_text_len if text_tokens is None else int(text_tokens)
    t = n + L
    macs += L * cfg.text_dim * d + cfg.pooled_dim * d + d * d  # context embedder + pooled MLP
    for i in range(cfg.depth):
        pre_only = i == cfg.depth - 1 and cfg.num_single_blocks == 0
        macs += 6 * d * d + n * (4 * d * d + mlp)  # image stream: adaLN, qkv, proj, MLP
        macs += (2 * d * d + L * 3 * d * d) if pre_only else (6 * d * d + L * (4 * d * d + mlp))  # text stream
        macs += 2 * t * t * d  # joint attention QK^T and AV
    single = 3 * d * d + t * d * (3 * d + m) + t * (d + m) * d + 2 * t * t * d
    return macs + cfg.num_single_blocks * single


def flops_summary(
    cfg: ModelConfig | str | dict, text_tokens: int | None = None, *, latent_size: int | None = None
) -> dict[str, int]:
    """{"params", "forward_macs", "forward_flops" (= 2 MACs), "train_flops_per_image" (= 3 x forward FLOPs)}."""
    cfg = _cfg(cfg, latent_size)
    macs = forward_macs(cfg, text_tokens)
    return {
        "params": count_params(cfg),
        "forward_macs": macs,
        "forward_flops": 2 * macs,
        "train_flops_per_image": 6 * macs,
    }


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash-attention kernel, which FlopCounterMode has no formula for: 2 matmuls."""
    b, h, s_q, d = query_shape
    s_k = key_shape[-2]
    d_v = value_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def example_inputs(
    cfg: ModelConfig, batch_size: int = 1, text_tokens: int | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Random forward inputs for a config (keyword arguments of model.forward)."""
    s = cfg.input_size
    inputs: dict[str, Any] = {
        "x": torch.randn(batch_size, cfg.in_channels, s, s, device=device),
        "t": torch.rand(batch_size, device=device),
    }
    if isinstance(cfg, DiTConfig) or (isinstance(cfg, UNetConfig) and not cfg.text_dim):
        inputs["y"] = torch.zeros(batch_size, dtype=torch.long, device=device)
    else:
        L = cfg.max_text_len if text_tokens is None else int(text_tokens)
        inputs["text_emb"] = torch.randn(batch_size, L, cfg.text_dim, device=device)
        inputs["text_mask"] = torch.ones(batch_size, L, dtype=torch.bool, device=device)
        inputs["text_pooled"] = torch.randn(batch_size, cfg.pooled_dim, device=device)
    return inputs


def measured_forward_macs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Forward MACs per sample of a real module measured with torch.utils.flop_counter.FlopCounterMode.

    Works on meta tensors (no compute; attention decomposes into counted bmm) and on CPU (the CPU
    flash-attention op gets the formula above).
    """
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        model(**inputs)
    batch = next(iter(inputs.values())).shape[0]
    return counter.get_total_flops() / 2 / batch
