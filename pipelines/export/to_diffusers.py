"""Export ditcore checkpoints to diffusers: DiT -> DiTTransformer2DModel (+ DiTPipeline), MM-DiT -> SD3 transformer.

Every weight maps exactly (up to float rounding); options diffusers cannot express raise `ExportError` naming them.
Output directory layout (see docs/export.md):
    OUT/transformer/            save_pretrained of the diffusers transformer
    OUT/scheduler/              scheduler matching the checkpoint's objective (when one can express it)
    OUT/vae/                    the given VAE, its scaling/shift factors set to the checkpoint's data factors
    OUT/model_index.json        DiT with a VAE: the directory is a `DiTPipeline`
    OUT/ditscale_export.json    source, objective, timestep convention, refusals turned into warnings

One convention needs a runtime step: diffusers' DiT embeds the timestep with frequencies 10000^(-i/(half-1))
(`Timesteps(downscale_freq_shift=1)`, not stored in any config), ditcore and the DiT paper with 10000^(-i/half).
`align_dit_time_embedding` (applied by `load_exported`) sets the two plain attributes that make them equal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditcore.checkpoint import load_checkpoint
from ditcore.models import DiT, DiTConfig, MMDiT, MMDiTConfig, config_to_dict
from ditcore.objectives import ObjectiveConfig
from ditcore.processes import FlowProcess, VPLinearProcess, build_process
from pipelines.infra.staging import staged_dir

EXPORT_META = "ditscale_export.json"
EXPORT_FORMAT_VERSION = 1
#: DiTPipeline builds its unconditional batch with class id 1000 (hard-coded for ImageNet)
DIT_PIPELINE_NULL_CLASS = 1000
#: diffusers' FeedForward width multiplier (neither target model exposes it in its config)
DIFFUSERS_MLP_RATIO = 4
#: diffusers' betas_for_alpha_bar clip: keeps the last alpha_bar > 0 where a process reaches alpha = 0
MAX_BETA = 0.999
#: floor on beta: negligible, yet float32(1 - beta) < 1, so alpha = 1 at t = 0 never makes DPM-Solver take log(0)
MIN_BETA = 1e-7

# ditcore prediction name -> diffusers scheduler prediction_type, per process family.
_VP_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_FLOW_PREDICTIONS = {"velocity": "flow_prediction", "eps": "epsilon", "x0": "sample"}


class ExportError(ValueError):
    """A model option, objective or data setting diffusers cannot express; the message names each one."""


# --------------------------------------------------------------------------------------------
# What can be exported
# --------------------------------------------------------------------------------------------


def unsupported_options(cfg: DiTConfig | MMDiTConfig) -> list[str]:
    """One message per option of `cfg` the target diffusers model cannot express (empty list: exportable)."""
    name = type(cfg).__name__
    target = "DiTTransformer2DModel" if isinstance(cfg, DiTConfig) else "SD3Transformer2DModel"
    bad = []
    if cfg.pos_embed != "sincos":
        bad.append(
            f"{name}.pos_embed={cfg.pos_embed!r} (2D RoPE): {target} only adds a fixed sin-cos table "
            "to the patch tokens"
        )
    if int(cfg.hidden_size * cfg.mlp_ratio) != DIFFUSERS_MLP_RATIO * cfg.hidden_size:
        bad.append(
            f"{name}.mlp_ratio={cfg.mlp_ratio} (MLP width {cfg.mlp_hidden}): {target}'s FeedForward is "
            f"fixed at {DIFFUSERS_MLP_RATIO} x hidden_size = {DIFFUSERS_MLP_RATIO * cfg.hidden_size}"
        )
    if getattr(cfg, "guidance_embed", False):
        bad.append(
            f"{name}.guidance_embed=True (a guidance-distilled student): {target} has no guidance-scale embedder, "
            "so its weights would be dropped"
        )
    if getattr(cfg, "mup_depth", False):
        bad.append(
            f"{name}.mup_depth=True: each block scales its residual branches by 1/sqrt(depth / mup_base_depth), "
            f"which {target} does not"
        )
    if isinstance(cfg, DiTConfig):
        if cfg.qk_norm:
            bad.append(f"{name}.qk_norm=True: {target}'s attention (BasicTransformerBlock) has no QK-norm")
        if cfg.depth < 1:
            bad.append(f"{name}.depth={cfg.depth}: {target} reads its final-layer conditioning from block 0")
    else:
        if cfg.num_single_blocks:
            bad.append(
                f"{name}.num_single_blocks={cfg.num_single_blocks} (FLUX single-stream blocks): {target} "
                "has only dual-stream JointTransformerBlocks"
            )
        if cfg.depth < 1:
            bad.append(f"{name}.depth={cfg.depth}: {target} needs at least one joint block")
    return bad


def check_exportable(cfg: DiTConfig | MMDiTConfig) -> None:
    """Raise ExportError listing every option of `cfg` that the target diffusers model cannot express."""
    bad = unsupported_options(cfg)
    if bad:
        raise ExportError("cannot export to diffusers: " + "; ".join(bad))


# --------------------------------------------------------------------------------------------
# Weight mapping helpers
# --------------------------------------------------------------------------------------------


def _patch_conv_weight(w: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """ditcore Linear patch embedding [D, p*p*C] (features ordered (p_h, p_w, C)) -> Conv2d weight [D, C, p, p]."""
    return w.reshape(w.shape[0], patch, patch, channels).permute(0, 3, 1, 2).contiguous()


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(shift, scale) rows -> (scale, shift): diffusers' AdaLayerNormContinuous chunks scale first."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _qkv(sd: dict[str, torch.Tensor], prefix: str) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Fused qkv Linear [3D, D] -> ((w, b) of q, k, v); heads are contiguous d-row groups in both layouts."""
    ws, bs = sd[f"{prefix}.weight"].chunk(3, dim=0), sd[f"{prefix}.bias"].chunk(3, dim=0)
    return tuple((w.contiguous(), b.contiguous()) for w, b in zip(ws, bs))


def _linear(out: dict[str, torch.Tensor], dst: str, sd: dict[str, torch.Tensor], src: str) -> None:
    out[f"{dst}.weight"] = sd[f"{src}.weight"]
    out[f"{dst}.bias"] = sd[f"{src}.bias"]


def _mup_factors(model: DiT | MMDiT) -> tuple[float, float]:
    """(q factor, readout factor) that fold muP into plain weights; both 1.0 without muP.

    diffusers' attention processors always use SDPA's default 1/sqrt(d) softmax scale: muP's scale s is folded
    into the queries as s * sqrt(d). muP's readout multiplier scales the final Linear's input, so it folds into
    that Linear's weight (not its bias).
    """
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_heads
    scale = model.blocks[0].attn.scale if isinstance(model, DiT) and len(model.blocks) else None
    if isinstance(model, MMDiT) and len(model.joint_blocks):
        scale = model.joint_blocks[0].scale
    q_factor = 1.0 if scale is None else float(scale) * math.sqrt(head_dim)
    return q_factor, float(model.output_mult)


# --------------------------------------------------------------------------------------------
# DiT -> DiTTransformer2DModel
# --------------------------------------------------------------------------------------------


def dit_num_embeds(cfg: DiTConfig) -> int:
    """Label-table size for diffusers (`num_embeds_ada_norm`): at least 1000 so DiTPipeline's null id 1000 exists."""
    return max(cfg.num_classes, DIT_PIPELINE_NULL_CLASS)


def dit_diffusers_config(cfg: DiTConfig) -> dict[str, Any]:
    """`DiTTransformer2DModel` constructor arguments for a DiT config."""
    check_exportable(cfg)
    return {
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,  # 2C with learn_sigma: prediction first, DiTPipeline splits it off
        "num_layers": cfg.depth,
        "sample_size": cfg.input_size,
        "patch_size": cfg.patch_size,
        "activation_fn": "gelu-approximate",  # ditcore Mlp: GELU(tanh)
        "num_embeds_ada_norm": dit_num_embeds(cfg),
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,  # the affine part is the adaLN modulation
        "norm_eps": 1e-6,  # ditcore layer_norm eps (diffusers' default is 1e-5)
        "attention_bias": True,
        "dropout": 0.0,
        "upcast_attention": False,
    }


def dit_state_dict(model: DiT) -> dict[str, torch.Tensor]:
    """ditcore DiT weights -> `DiTTransformer2DModel` state dict."""
    cfg = model.config
    check_exportable(cfg)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    q_factor, out_factor = _mup_factors(model)
    out: dict[str, torch.Tensor] = {
        "pos_embed.proj.weight": _patch_conv_weight(sd["x_embedder.proj.weight"], cfg.patch_size, cfg.in_channels),
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
    }
    # Null class: ditcore uses row num_classes, DiTPipeline id 1000. Rows num_classes..1000 all hold the null
    # embedding, so both ids (and any unused id in between) mean "unconditional".
    table = sd["y_embedder.embedding_table.weight"]  # [num_classes + 1, D]
    pad = dit_num_embeds(cfg) - cfg.num_classes
    if pad:
        table = torch.cat([table, table[-1:].expand(pad, -1)], dim=0)  # [num_embeds + 1, D]
    for i in range(cfg.depth):
        src, dst = f"blocks.{i}", f"transformer_blocks.{i}"
        # diffusers' DiT gives every block its own copy of the timestep/label embedders (AdaLayerNormZero.emb);
        # ditcore computes the conditioning once, so each copy gets the same shared weights.
        _linear(out, f"{dst}.norm1.emb.timestep_embedder.linear_1", sd, "t_embedder.mlp.0")
        _linear(out, f"{dst}.norm1.emb.timestep_embedder.linear_2", sd, "t_embedder.mlp.2")
        out[f"{dst}.norm1.emb.class_embedder.embedding_table.weight"] = table
        # Same chunk order on both sides: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        _linear(out, f"{dst}.norm1.linear", sd, f"{src}.adaLN_modulation.linear")
        (qw, qb), (kw, kb), (vw, vb) = _qkv(sd, f"{src}.attn.qkv")
        out[f"{dst}.attn1.to_q.weight"], out[f"{dst}.attn1.to_q.bias"] = qw * q_factor, qb * q_factor
        out[f"{dst}.attn1.to_k.weight"], out[f"{dst}.attn1.to_k.bias"] = kw, kb
        out[f"{dst}.attn1.to_v.weight"], out[f"{dst}.attn1.to_v.bias"] = vw, vb
        _linear(out, f"{dst}.attn1.to_out.0", sd, f"{src}.attn.proj")
        _linear(out, f"{dst}.ff.net.0.proj", sd, f"{src}.mlp.fc1")
        _linear(out, f"{dst}.ff.net.2", sd, f"{src}.mlp.fc2")
    # Final layer: diffusers chunks proj_out_1 as (shift, scale), like ditcore's FinalLayer.
    _linear(out, "proj_out_1", sd, "final_layer.adaLN_modulation.linear")
    out["proj_out_2.weight"] = sd["final_layer.linear.weight"] * out_factor
    out["proj_out_2.bias"] = sd["final_layer.linear.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def align_dit_time_embedding(transformer: nn.Module, timestep_scale: float) -> nn.Module:
    """Make a loaded `DiTTransformer2DModel` embed timesteps exactly as ditcore does; returns it (in place).

    diffusers' DiT hard-codes `Timesteps(downscale_freq_shift=1)` (frequencies 10000^(-i/127) for 256 channels);
    ditcore uses 10000^(-i/128). Both are plain attributes, not weights, so they are set after loading.
    `timestep_scale` maps the diffusers timestep onto ditcore's 1000 * t (see `dit_timestep_scale`).
    """
    for block in transformer.transformer_blocks:
        proj = block.norm1.emb.time_proj
        proj.downscale_freq_shift = 0
        proj.scale = timestep_scale
    return transformer


def dit_timestep_scale(objective: ObjectiveConfig) -> float:
    """Factor from the diffusers timestep to ditcore's embedding argument 1000 * t.

    VP processes: the diffusers timestep is the discrete index i of a 1000-step schedule and t = i / 999
    (ditcore's VP time grid), so the factor is 1000 / 999. Flow-type processes: timestep = 1000 * t, factor 1.
    """
    process = build_process(objective.process)
    if isinstance(process, FlowProcess) or not _variance_preserving(process):
        return 1.0  # flow, and edm-ve (no diffusers scheduler; its continuous t goes in as 1000 t)
    steps = process.num_steps if isinstance(process, VPLinearProcess) else 1000
    return 1000.0 / (steps - 1)


# --------------------------------------------------------------------------------------------
# MM-DiT -> SD3Transformer2DModel
# --------------------------------------------------------------------------------------------


def mmdit_diffusers_config(cfg: MMDiTConfig) -> dict[str, Any]:
    """`SD3Transformer2DModel` constructor arguments for an MM-DiT config."""
    check_exportable(cfg)
    return {
        "sample_size": cfg.input_size,
        "patch_size": cfg.patch_size,
        "in_channels": cfg.in_channels,
        "num_layers": cfg.depth,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "num_attention_heads": cfg.num_heads,
        "joint_attention_dim": cfg.text_dim,
        "caption_projection_dim": cfg.hidden_size,  # ditcore's context_embedder maps text_dim -> hidden_size
        "pooled_projection_dim": cfg.pooled_dim,
        "out_channels": cfg.out_channels,
        # The table is the native grid itself: diffusers spreads a larger table's positions over the base grid
        # (positions scaled by base/max), ditcore uses integer positions, so only max == grid matches.
        "pos_embed_max_size": cfg.input_size // cfg.patch_size,
        "dual_attention_layers": (),
        "qk_norm": "rms_norm" if cfg.qk_norm else None,
    }


def mmdit_state_dict(model: MMDiT) -> dict[str, torch.Tensor]:
    """ditcore MM-DiT weights -> `SD3Transformer2DModel` state dict."""
    cfg = model.config
    check_exportable(cfg)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    q_factor, out_factor = _mup_factors(model)
    grid = cfg.input_size // cfg.patch_size
    out: dict[str, torch.Tensor] = {
        # SD3's PatchEmbed stores its sin-cos table (persistent buffer); ditcore's is the same MAE layout.
        "pos_embed.pos_embed": model.pos_embed.detach().cpu().reshape(1, grid * grid, cfg.hidden_size),
        "pos_embed.proj.weight": _patch_conv_weight(sd["x_embedder.proj.weight"], cfg.patch_size, cfg.in_channels),
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
    }
    _linear(out, "time_text_embed.timestep_embedder.linear_1", sd, "t_embedder.mlp.0")
    _linear(out, "time_text_embed.timestep_embedder.linear_2", sd, "t_embedder.mlp.2")
    _linear(out, "time_text_embed.text_embedder.linear_1", sd, "pooled_embedder.mlp.0")
    _linear(out, "time_text_embed.text_embedder.linear_2", sd, "pooled_embedder.mlp.2")
    _linear(out, "context_embedder", sd, "context_embedder")
    for i, block in enumerate(model.joint_blocks):
        src, dst = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        _linear(out, f"{dst}.norm1.linear", sd, f"{src}.img_mod.linear")  # AdaLayerNormZero: same 6-chunk order
        if block.pre_only:
            # Last block: diffusers' AdaLayerNormContinuous chunks (scale, shift), ditcore's 2-chunk mod (shift, scale).
            out[f"{dst}.norm1_context.linear.weight"] = _swap_halves(sd[f"{src}.txt_mod.linear.weight"])
            out[f"{dst}.norm1_context.linear.bias"] = _swap_halves(sd[f"{src}.txt_mod.linear.bias"])
        else:
            _linear(out, f"{dst}.norm1_context.linear", sd, f"{src}.txt_mod.linear")
        (qw, qb), (kw, kb), (vw, vb) = _qkv(sd, f"{src}.img_qkv")
        (cqw, cqb), (ckw, ckb), (cvw, cvb) = _qkv(sd, f"{src}.txt_qkv")
        # With QK-norm the query scale is removed by the RMSNorm, so muP's factor goes into its gain instead.
        fold_q = 1.0 if cfg.qk_norm else q_factor
        out[f"{dst}.attn.to_q.weight"], out[f"{dst}.attn.to_q.bias"] = qw * fold_q, qb * fold_q
        out[f"{dst}.attn.to_k.weight"], out[f"{dst}.attn.to_k.bias"] = kw, kb
        out[f"{dst}.attn.to_v.weight"], out[f"{dst}.attn.to_v.bias"] = vw, vb
        out[f"{dst}.attn.add_q_proj.weight"], out[f"{dst}.attn.add_q_proj.bias"] = cqw * fold_q, cqb * fold_q
        out[f"{dst}.attn.add_k_proj.weight"], out[f"{dst}.attn.add_k_proj.bias"] = ckw, ckb
        out[f"{dst}.attn.add_v_proj.weight"], out[f"{dst}.attn.add_v_proj.bias"] = cvw, cvb
        if cfg.qk_norm:
            # JointQKNorm keeps one RMSNorm gain per modality: image -> norm_q/k, text -> norm_added_q/k.
            out[f"{dst}.attn.norm_q.weight"] = sd[f"{src}.qk_norm.img.q_norm.weight"] * q_factor
            out[f"{dst}.attn.norm_k.weight"] = sd[f"{src}.qk_norm.img.k_norm.weight"]
            out[f"{dst}.attn.norm_added_q.weight"] = sd[f"{src}.qk_norm.txt.q_norm.weight"] * q_factor
            out[f"{dst}.attn.norm_added_k.weight"] = sd[f"{src}.qk_norm.txt.k_norm.weight"]
        _linear(out, f"{dst}.attn.to_out.0", sd, f"{src}.img_proj")
        _linear(out, f"{dst}.ff.net.0.proj", sd, f"{src}.img_mlp.fc1")
        _linear(out, f"{dst}.ff.net.2", sd, f"{src}.img_mlp.fc2")
        if not block.pre_only:
            _linear(out, f"{dst}.attn.to_add_out", sd, f"{src}.txt_proj")
            _linear(out, f"{dst}.ff_context.net.0.proj", sd, f"{src}.txt_mlp.fc1")
            _linear(out, f"{dst}.ff_context.net.2", sd, f"{src}.txt_mlp.fc2")
    out["norm_out.linear.weight"] = _swap_halves(sd["final_layer.adaLN_modulation.linear.weight"])
    out["norm_out.linear.bias"] = _swap_halves(sd["final_layer.adaLN_modulation.linear.bias"])
    out["proj_out.weight"] = sd["final_layer.linear.weight"] * out_factor
    out["proj_out.bias"] = sd["final_layer.linear.bias"]
    return {k: v.contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# In-memory conversion
# --------------------------------------------------------------------------------------------


def convert_model(model: nn.Module) -> nn.Module:
    """A ditcore DiT / MMDiT -> the equivalent diffusers transformer (eval mode, float32 on CPU).

    A DiT result is not yet time-aligned: call `align_dit_time_embedding` before comparing or sampling.
    """
    from diffusers import DiTTransformer2DModel, SD3Transformer2DModel

    if isinstance(model, DiT):
        target = DiTTransformer2DModel(**dit_diffusers_config(model.config))
        sd = dit_state_dict(model)
    elif isinstance(model, MMDiT):
        target = SD3Transformer2DModel(**mmdit_diffusers_config(model.config))
        sd = mmdit_state_dict(model)
    else:
        raise TypeError(f"convert_model: expected a ditcore DiT or MMDiT, got {type(model).__name__}")
    # strict: a key the mapping forgot or invented fails here, not as silently random weights.
    target.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return target.eval()


# --------------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------------


def _vp_trained_betas(process, num_steps: int = 1000) -> list[float]:
    """Betas whose alphas_cumprod[i] equals alpha(t_i)^2 at ditcore's t_i = i / (num_steps - 1) (float64)."""
    t = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
    alpha_bar = process.alpha(t) ** 2  # [num_steps]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    # alpha = 0 at t = 1 (vp-cosine, sit-gvp) would make beta = 1 and an infinite sigma: clip like diffusers does.
    # alpha = 1 at t = 0 gives beta_0 = 0 (sigma_0 = 0): floored so scheduler set-up never takes log(0).
    return (1.0 - alpha_bar / prev).clamp(MIN_BETA, MAX_BETA).tolist()


def _variance_preserving(process) -> bool:
    """alpha^2 + sigma^2 = 1 along the path (the VP processes), which diffusers' beta schedulers assume."""
    t = torch.linspace(0.0, float(process.t_max), 11, dtype=torch.float64)
    return bool(torch.allclose(process.alpha(t) ** 2 + process.sigma(t) ** 2, torch.ones_like(t), atol=1e-6))


def scheduler_for(objective: ObjectiveConfig, arch: str):
    """A diffusers scheduler that samples the objective's process/prediction as the transformer expects.

    DiT (`DiTPipeline`, which calls `scheduler.scale_model_input`): `DPMSolverMultistepScheduler` (ditcore's
    default sampler, DPM-Solver++ 2M), in flow mode for flow processes. MM-DiT: `FlowMatchEulerDiscreteScheduler`
    (the SD3 scheduler) for flow + velocity only. Raises ExportError naming the unsupported combination.
    """
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    process = build_process(objective.process)
    pred = objective.prediction
    combo = f"objective.process={objective.process!r} with objective.prediction={pred!r}"
    if arch == "mmdit":
        if isinstance(process, FlowProcess) and pred == "velocity":
            # Float timesteps 1000 * sigma = SD3Transformer2DModel's 1000 * t exactly; shift 1 = uniform-t grid.
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        raise ExportError(
            f"{combo}: SD3Transformer2DModel's scheduler (FlowMatchEulerDiscreteScheduler) only "
            "samples flow velocity models"
        )
    if isinstance(process, FlowProcess):
        if pred not in _FLOW_PREDICTIONS:
            raise ExportError(
                f"{combo}: diffusers' flow schedulers convert v-prediction with VP coefficients "
                "(alpha^2 + sigma^2 = 1), which the flow path does not satisfy"
            )
        # FlowMatchEulerDiscreteScheduler has no scale_model_input, which DiTPipeline calls every step.
        return DPMSolverMultistepScheduler(
            num_train_timesteps=1000, use_flow_sigmas=True, flow_shift=1.0, prediction_type=_FLOW_PREDICTIONS[pred]
        )
    if not _variance_preserving(process):
        raise ExportError(
            f"objective.process={objective.process!r}: a variance-exploding path (alpha = 1, sigma up to "
            f"{float(process.sigma(torch.tensor(float(process.t_max), dtype=torch.float64))):g}); diffusers' beta "
            "schedulers assume alpha^2 + sigma^2 = 1"
        )
    if pred not in _VP_PREDICTIONS:
        raise ExportError(
            f"{combo}: diffusers' VP schedulers take eps, v or x0 (sample) predictions; the "
            "probability-flow velocity of a VP path is not among them"
        )
    if isinstance(process, VPLinearProcess):
        return DPMSolverMultistepScheduler(
            num_train_timesteps=process.num_steps,
            beta_schedule="linear",
            beta_start=process.beta_start,
            beta_end=process.beta_end,
            prediction_type=_VP_PREDICTIONS[pred],
        )
    # vp-cosine / sit-gvp: tabulate the process on ditcore's 1000-point VP grid (exact alphas_cumprod).
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=_vp_trained_betas(process), prediction_type=_VP_PREDICTIONS[pred]
    )


# --------------------------------------------------------------------------------------------
# Checkpoint directory -> diffusers directory
# --------------------------------------------------------------------------------------------


def _objective(config: dict) -> tuple[ObjectiveConfig, bool]:
    """The checkpoint's ObjectiveConfig (missing keys take the training defaults) and whether it was present."""
    raw = config.get("objective")
    if not isinstance(raw, dict):
        return ObjectiveConfig(), False
    names = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    try:
        return ObjectiveConfig(**{k: v for k, v in raw.items() if k in names}), True
    except ValueError as e:
        raise ExportError(f"checkpoint config.json: invalid objective: {e}") from e


def _vae_load_kwargs() -> dict[str, Any]:
    from diffusers.utils import is_accelerate_available

    # Without accelerate diffusers loads this way anyway, after printing an install hint on every load.
    return {} if is_accelerate_available() else {"low_cpu_mem_usage": False}


def _load_vae(path: str | os.PathLike, latent_channels: int, scaling: float, shift: float):
    """AutoencoderKL from a save_pretrained directory (or a pipeline directory with vae/), factors set to the data's."""
    from diffusers import AutoencoderKL

    root = Path(path)
    if (root / "config.json").is_file():
        folder, subfolder = root, None
    elif (root / "vae" / "config.json").is_file():
        folder, subfolder = root / "vae", "vae"
    else:
        raise ExportError(f"VAE directory {root}: no config.json (expected a diffusers AutoencoderKL directory)")
    try:
        vae = AutoencoderKL.from_pretrained(str(root), subfolder=subfolder, **_vae_load_kwargs())
    except Exception as e:  # diffusers raises many types; name the directory
        raise ExportError(f"VAE directory {folder}: cannot load an AutoencoderKL: {e}") from e
    if int(vae.config.latent_channels) != latent_channels:
        raise ExportError(
            f"VAE {folder} has latent_channels={vae.config.latent_channels}, the model's "
            f"in_channels is {latent_channels}"
        )
    given = {"scaling_factor": vae.config.scaling_factor, "shift_factor": vae.config.shift_factor}
    # The model was trained on (z - shift) * scale with the checkpoint's data factors; pipelines read the VAE config.
    vae.register_to_config(scaling_factor=scaling, shift_factor=shift)
    return vae.eval(), given


def check_export_out(out: Path, overwrite: bool) -> None:
    """`out` is replaced whole: refused when it holds anything but an earlier export (with overwrite), or is the
    working directory or a folder holding it (ValueError naming it)."""
    from pipelines.infra import storage

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    storage.check_output_dir(str(out), kind="diffusers export", replaces=(EXPORT_META,))


def export_to_diffusers(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    use_ema: bool = True,
    overwrite: bool = False,
    source_uri: str | None = None,
) -> dict[str, Any]:
    """Export a ditcore checkpoint directory to a diffusers directory `out`; returns the export record.

    `source_uri`: where the checkpoint came from when `checkpoint` is a local copy of it (an s3:// checkpoint),
    recorded instead of the copy's path.

    DiT -> `DiTTransformer2DModel` (+ `DiTPipeline` when `vae` is given); MM-DiT -> `SD3Transformer2DModel`
    (+ the VAE). EMA weights when present and `use_ema`, else model.safetensors. Raises ExportError naming every
    option or objective diffusers cannot express; without a VAE a missing scheduler is only a warning.
    """
    check_export_out(Path(out), overwrite)  # before the load and conversion
    ckpt = load_checkpoint(checkpoint, use_ema=use_ema)
    model, config = ckpt.model, ckpt.config
    cfg = model.config
    arch = cfg.arch
    check_exportable(cfg)
    objective, has_objective = _objective(config)
    if objective.preconditioning != "none":
        raise ExportError(
            f"objective.preconditioning={objective.preconditioning!r}: the weights are EDM's raw network F; the "
            "denoiser D = c_skip x + c_out F(c_in x, c_noise) wraps it with scalings of sigma that neither diffusers "
            "transformer applies"
        )
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    scaling = float(data.get("scaling_factor") or 1.0)
    shift = float(data.get("shift_factor") or 0.0)
    warnings: list[str] = []
    if not has_objective:
        warnings.append(
            "config.json has no 'objective': assumed the training defaults "
            f"(process={objective.process!r}, prediction={objective.prediction!r})"
        )

    try:
        scheduler = scheduler_for(objective, arch)
    except ExportError as e:
        if vae is not None and arch == "dit":
            raise ExportError(f"cannot build a DiTPipeline: {e}") from e
        scheduler = None
        warnings.append(f"no scheduler written: {e}")
    if vae is not None and arch == "dit":
        _check_dit_pipeline(cfg, shift)

    transformer = convert_model(model)
    vae_module, vae_given = (None, None)
    if vae is not None:
        vae_module, vae_given = _load_vae(vae, cfg.in_channels, scaling, shift)

    record: dict[str, Any] = {
        "format": "ditscale-diffusers-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "source": {
            "checkpoint": source_uri if source_uri and "://" in source_uri else str(Path(checkpoint).resolve()),
            "weights": ckpt.weights,
            "step": ckpt.state.get("step") if isinstance(ckpt.state, dict) else None,
        },
        "arch": arch,
        "diffusers_class": type(transformer).__name__,
        "pipeline": "DiTPipeline" if (vae_module is not None and arch == "dit") else None,
        "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        "model": config_to_dict(cfg),
        "objective": dataclasses.asdict(objective),
        "data": {"scaling_factor": scaling, "shift_factor": shift, "manifest": data.get("manifest")},
        "vae": None if vae is None else {"source": str(Path(vae).resolve()), "given_factors": vae_given},
        "timestep": _timestep_record(arch, objective, cfg),
        "warnings": warnings,
    }
    _write_export(Path(out), record, transformer, scheduler, vae_module)
    return record


def _check_dit_pipeline(cfg: DiTConfig, shift: float) -> None:
    """ExportError naming every reason a DiTPipeline would not sample this model correctly."""
    problems = []
    if shift != 0.0:
        problems.append(
            f"data.shift_factor={shift}: DiTPipeline decodes latents / scaling_factor and never adds a shift"
        )
    if cfg.num_classes > DIT_PIPELINE_NULL_CLASS:
        problems.append(
            f"DiTConfig.num_classes={cfg.num_classes}: DiTPipeline's unconditional "
            f"class id is {DIT_PIPELINE_NULL_CLASS}, a real class of this model"
        )
    if problems:
        raise ExportError("cannot build a DiTPipeline: " + "; ".join(problems))


def _write_export(out: Path, record: dict[str, Any], transformer, scheduler, vae_module) -> None:
    """Save the pipeline (or its parts) and the export record under a temporary name, then commit it to `out`."""
    from diffusers import DiTPipeline

    with staged_dir(out) as tmp:
        if record["pipeline"]:
            DiTPipeline(transformer=transformer, vae=vae_module, scheduler=scheduler).save_pretrained(str(tmp))
        else:
            transformer.save_pretrained(str(tmp / "transformer"))
            if scheduler is not None:
                scheduler.save_pretrained(str(tmp / "scheduler"))
            if vae_module is not None:
                vae_module.save_pretrained(str(tmp / "vae"))
        with open(tmp / EXPORT_META, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)


def _timestep_record(arch: str, objective: ObjectiveConfig, cfg: DiTConfig | MMDiTConfig) -> dict[str, Any]:
    """How a diffusers timestep maps onto ditcore's continuous t, stored in ditscale_export.json."""
    if arch == "dit":
        scale = dit_timestep_scale(objective)
        # Ids num_classes..1000 all hold the null embedding when the table was padded (see dit_state_dict).
        null_ids = (
            sorted({cfg.num_classes, DIT_PIPELINE_NULL_CLASS})
            if cfg.num_classes <= DIT_PIPELINE_NULL_CLASS
            else [cfg.num_classes]
        )
        return {
            "timestep_scale": scale,
            "t_from_timestep": "timestep / 1000" if scale == 1.0 else f"timestep / {1000.0 / scale:g}",
            "requires_alignment": "align_dit_time_embedding: per block norm1.emb.time_proj.downscale_freq_shift = 0 "
            "and .scale = timestep_scale",
            "null_class_ids": null_ids,
        }
    return {"timestep_scale": 1.0, "t_from_timestep": "timestep / 1000", "requires_alignment": None}


# --------------------------------------------------------------------------------------------
# Loading an export
# --------------------------------------------------------------------------------------------


def read_export_record(path: str | os.PathLike) -> dict[str, Any]:
    """ditscale_export.json of an exported directory."""
    meta = Path(path) / EXPORT_META
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: missing (not a ditscale diffusers export)")
    with open(meta) as f:
        return json.load(f)


def load_exported(path: str | os.PathLike, **from_pretrained_kwargs: Any) -> nn.Module:
    """Load an export with diffusers: the `DiTPipeline` when there is one, else the transformer; DiT time-aligned."""
    from diffusers import DiTPipeline, DiTTransformer2DModel, SD3Transformer2DModel

    record = read_export_record(path)
    kwargs = {**_vae_load_kwargs(), **from_pretrained_kwargs}
    if record.get("pipeline") == "DiTPipeline":
        pipe = DiTPipeline.from_pretrained(str(path), **kwargs)
        align_dit_time_embedding(pipe.transformer, record["timestep"]["timestep_scale"])
        return pipe
    cls = DiTTransformer2DModel if record["arch"] == "dit" else SD3Transformer2DModel
    transformer = cls.from_pretrained(str(path), subfolder="transformer", **kwargs)
    if record["arch"] == "dit":
        align_dit_time_embedding(transformer, record["timestep"]["timestep_scale"])
    return transformer.eval()
