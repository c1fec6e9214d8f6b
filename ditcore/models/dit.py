"""DiT: class-conditional Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ditcore.config import check_ints
from ditcore.models import mup as mup_lib
from ditcore.models.layers import (
    AdaLNModulation,
    Attention,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    gated_residual,
    grid_positions,
    layer_norm,
    modulate,
    rope_2d_freqs,
    run_block,
    sincos_pos_embed_2d,
    unpatchify,
)

POS_EMBEDS = ("sincos", "rope")


@dataclass(frozen=True)
class TransformerConfig:
    """Fields, checks and sizes DiTConfig and MMDiTConfig share (same names, same defaults).

    The subclasses add their architecture's fields and an `arch` field whose default names it.
    """

    patch_size: int = 2
    input_size: int = 32
    in_channels: int = 4
    pos_embed: str = "sincos"
    mlp_ratio: float = 4.0
    mup: bool = False
    mup_base_width: int = 256
    mup_depth: bool = False
    mup_base_depth: int = 4
    guidance_embed: bool = False  # guidance-distilled student: the CFG scale w is an input (guidance_distill.py)

    def __post_init__(self) -> None:
        _validate_common(self)
        name, arch = type(self).__name__, type(self).__dataclass_fields__["arch"].default
        if self.arch != arch:
            raise ValueError(f"{name}.arch must be {arch!r}, got {self.arch!r}")

    @property
    def num_tokens(self) -> int:
        """Image tokens N = (input_size / patch_size)^2."""
        return (self.input_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the MLPs."""
        return int(self.hidden_size * self.mlp_ratio)


@dataclass(frozen=True)
class DiTConfig(TransformerConfig):
    """DiT architecture. input_size is the latent height = width; y == num_classes is the null class."""

    arch: str = "dit"
    depth: int = 12  # DiT blocks
    hidden_size: int = 384  # token width (DiT-S: 384, DiT-XL: 1152)
    num_heads: int = 6
    num_classes: int = 1000  # class labels 0..num_classes-1; the label num_classes is the null class
    learn_sigma: bool = False  # output 2C channels: the prediction, then the variance interpolation (iDDPM)
    qk_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 1:
            raise ValueError(f"DiTConfig.num_classes must be >= 1, got {self.num_classes}")

    @property
    def out_channels(self) -> int:
        """Output channels: 2C with learned sigma (prediction first, then the variance interpolation)."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels


def _validate_common(cfg) -> None:
    """Checks shared by DiTConfig and MMDiTConfig; errors name the field."""
    name = type(cfg).__name__
    check_ints(cfg, ("hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "mup_base_width"), 1)
    check_ints(cfg, ("depth",), 0)
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"{name}.hidden_size={cfg.hidden_size} is not divisible by num_heads={cfg.num_heads}")
    if cfg.input_size % cfg.patch_size:
        raise ValueError(f"{name}.input_size={cfg.input_size} is not divisible by patch_size={cfg.patch_size}")
    if cfg.pos_embed not in POS_EMBEDS:
        raise ValueError(f"{name}.pos_embed must be one of {POS_EMBEDS}, got {cfg.pos_embed!r}")
    if cfg.pos_embed == "sincos" and cfg.hidden_size % 4:
        raise ValueError(f"{name}.hidden_size={cfg.hidden_size} must be divisible by 4 for sincos pos_embed")
    if cfg.pos_embed == "rope" and (cfg.hidden_size // cfg.num_heads) % 4:
        raise ValueError(f"{name}: head dim {cfg.hidden_size // cfg.num_heads} must be divisible by 4 for rope")
    if not (math.isfinite(cfg.mlp_ratio) and cfg.mlp_ratio > 0):
        raise ValueError(f"{name}.mlp_ratio must be a finite number > 0, got {cfg.mlp_ratio!r}")
    if cfg.mlp_hidden < 1:
        raise ValueError(
            f"{name}.mlp_ratio={cfg.mlp_ratio!r} x hidden_size={cfg.hidden_size} gives an MLP of width "
            f"{cfg.mlp_hidden}; it must be at least 1"
        )
    check_ints(cfg, ("mup_base_depth",), 1)
    if cfg.mup_depth and not cfg.mup:
        raise ValueError(f"{name}.mup_depth=True needs mup=True (depth-muP extends width muP)")
    if cfg.mup_depth and cfg.depth + getattr(cfg, "num_single_blocks", 0) < 1:
        raise ValueError(f"{name}.mup_depth=True needs at least one block")


def init_guidance_embedder(g_embedder: nn.Module | None) -> None:
    """Guidance embedder of a distilled student: N(0, .02) input layer, zero output layer, so the student's
    conditioning (and output) equals the teacher's at initialisation whatever w is."""
    if g_embedder is None:
        return
    nn.init.normal_(g_embedder.mlp[0].weight, std=0.02)
    nn.init.zeros_(g_embedder.mlp[2].weight)
    nn.init.zeros_(g_embedder.mlp[2].bias)


def add_guidance_embedding(
    g_embedder: nn.Module | None, c_emb: torch.Tensor, guidance: torch.Tensor | float | None
) -> torch.Tensor:
    """c_emb [B, D] + embedding of the guidance scale w (embedded like the timestep, FLUX.1-dev style).

    Without a guidance embedder, `guidance` must be None (CFG of such a model is two forwards, ditcore.samplers).
    With one, a missing w means w = 1 (the plain conditional prediction)."""
    if g_embedder is None:
        if guidance is not None:
            raise ValueError("guidance= given to a model without guidance_embed (use classifier-free guidance)")
        return c_emb
    w = torch.as_tensor(1.0 if guidance is None else guidance, dtype=torch.float32, device=c_emb.device)
    if w.ndim == 0:
        w = w.expand(c_emb.shape[0])
    if w.shape != (c_emb.shape[0],):
        raise ValueError(f"guidance must be a scalar or [B={c_emb.shape[0]}], got shape {tuple(w.shape)}")
    return c_emb + g_embedder(w).to(c_emb.dtype)


@dataclass(frozen=True)
class BlockSpec:
    """The sizes and scales every block of one model is built with (`AdaLNTransformer._block_spec`)."""

    hidden_size: int
    num_heads: int
    mlp_hidden: int
    qk_norm: bool
    attn_scale: float | None  # muP's 1/d attention scale; None: SDPA's 1/sqrt(d)
    branch_mult: float = 1.0  # depth-muP 1/sqrt(L / L0); 1.0 unless config.mup_depth


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT Figure 3): gates start at zero, so the block starts as the identity."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        d = spec.hidden_size
        self.attn = Attention(d, spec.num_heads, qk_norm=spec.qk_norm, scale=spec.attn_scale)
        self.mlp = Mlp(d, spec.mlp_hidden)
        self.adaLN_modulation = AdaLNModulation(d, 6)
        self.branch_mult = spec.branch_mult

    def forward(self, x: torch.Tensor, c_act: torch.Tensor, rope=None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c_act)  # 6 x [B, D]
        a = self.attn(modulate(layer_norm(x), shift_msa, scale_msa), rope)  # [B, N, D]
        x = gated_residual(x, gate_msa, a, self.branch_mult)  # [B, N, D]
        x = gated_residual(x, gate_mlp, self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp)), self.branch_mult)
        return x  # [B, N, D]


class AdaLNTransformer(nn.Module):
    """What DiT and MM-DiT share: patch embedding in, adaLN-Zero init, the conditioning vector, the zero-initialised
    output layer (muP readout multiplier) and the muP param groups.

    A subclass's __init__ calls `_init_input` first and `_init_output` last, so the state-dict keys keep their order
    (x_embedder first, final_layer last) and the seeded init draws in the same order.
    """

    arch_name = "AdaLNTransformer"  # in error messages (the class name, which FSDP2 wrapping would change)
    activation_checkpointing = False  # recompute each block in backward (layers.set_activation_checkpointing)
    _input_prefixes: tuple[str, ...] = ()
    _output_prefixes = ("final_layer.linear",)
    _keep_prefixes: tuple[str, ...] = ()
    _vector_prefixes: tuple[str, ...] = ()  # muP "vector" parameters besides the biases and gains
    _block_prefixes: tuple[str, ...] = ()  # the depth-muP blocks
    _normal_init: tuple[str, ...] = ()  # parameters drawn from N(0, .02), in this order, after the xavier linears

    def _init_input(self, config) -> None:
        """config, the sizes the forward reads, and the patch embedding (the first module of the state dict)."""
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = config.patch_size
        self.num_heads = config.num_heads
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, config.hidden_size)

    @property
    def num_blocks(self) -> int:
        """Blocks that depth-muP counts: `depth` (+ MM-DiT's single-stream blocks)."""
        return self.config.depth + getattr(self.config, "num_single_blocks", 0)

    def _init_pos_embed(self) -> None:
        """pos_embed: the fixed 2-D sin-cos table [1, N, D] of the configured latent size, or None with RoPE.

        A buffer recomputed from the config, so not part of the checkpoint."""
        cfg = self.config
        grid = cfg.input_size // cfg.patch_size
        if cfg.pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.hidden_size, grid, grid)[None], persistent=False)
        else:
            self.pos_embed = None

    def _pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        """The sin-cos table [1, N, D] for a latent of h x w (recomputed when that is not the configured size)."""
        p = self.patch_size
        if h == w == self.config.input_size:
            return self.pos_embed
        # Other latent sizes (e.g. sampling at another resolution): recompute the fixed table.
        return sincos_pos_embed_2d(self.config.hidden_size, h // p, w // p, device=self.pos_embed.device)[None].to(
            self.pos_embed.dtype
        )

    def _rope_tables(self, gh: int, gw: int, n_extra: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) [N + n_extra, head dim]: a gh x gw token grid (row, col), then n_extra tokens at (0, 0)."""
        ys, xs = grid_positions(gh, gw, device=device)
        if n_extra:
            zeros = torch.zeros(n_extra, dtype=ys.dtype, device=device)
            ys, xs = torch.cat([ys, zeros]), torch.cat([xs, zeros])
        return rope_2d_freqs(self.config.hidden_size // self.num_heads, ys, xs)

    def _block_spec(self) -> BlockSpec:
        """What every block is built with: the config's sizes, muP's attention scale, depth-muP's multiplier."""
        cfg = self.config
        return BlockSpec(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.mlp_hidden,
            cfg.qk_norm,
            attn_scale=mup_lib.attention_scale(cfg.hidden_size // cfg.num_heads, cfg.mup),
            branch_mult=mup_lib.branch_mult(self.num_blocks, cfg.mup_depth, cfg.mup_base_depth),
        )

    def _init_output(self) -> None:
        """The output layer (the last module of the state dict), the muP readout multiplier, then the init."""
        d = self.config.hidden_size
        self.final_layer = FinalLayer(d, self.patch_size, self.out_channels)
        self.output_mult = 1.0 / mup_lib.width_mult(d, self.config.mup, self.config.mup_base_width)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT reference init (xavier linears, N(0, .02) embeddings), muP scales if configured, adaLN-Zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for name in self._normal_init:
            nn.init.normal_(self.get_parameter(name), std=0.02)
        if self.config.mup:
            mup_lib.init_mup_(self, self._input_prefixes, self._output_prefixes, keep_prefixes=self._keep_prefixes)
        # adaLN-Zero: every modulation (hence every gate) and the final projection start at exactly zero.
        for m in self.modules():
            if isinstance(m, AdaLNModulation):
                nn.init.zeros_(m.linear.weight)
                nn.init.zeros_(m.linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        init_guidance_embedder(self.g_embedder)

    def _check_input(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(t [B], H, W) of x [B, C, H, W], which must have in_channels channels; a 0-dim t is shared by the batch."""
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(
                f"{self.arch_name}: expected {self.in_channels} input channels, got x of shape {tuple(x.shape)}"
            )
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != b):
            raise ValueError(f"{self.arch_name}: t must be [B={b}] or a scalar, got shape {tuple(t.shape)}")
        return (t.expand(b) if t.ndim == 0 else t), h, w

    def _conditioning(
        self, t: torch.Tensor, cond_emb: torch.Tensor, guidance: torch.Tensor | float | None
    ) -> torch.Tensor:
        """SiLU(t embedding + cond_emb [B, D] (+ guidance embedding)) [B, D]: the SiLU shared by every adaLN."""
        c_emb = self.t_embedder(t) + cond_emb  # [B, D]
        return F.silu(add_guidance_embedding(self.g_embedder, c_emb, guidance))  # [B, D]

    def _readout(self, tokens: torch.Tensor, c_act: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Image tokens [B, N, D] -> output layer -> [B, C_out, H, W]."""
        out = self.final_layer(tokens, c_act, self.output_mult)  # [B, N, p*p*C_out]
        return unpatchify(out, self.patch_size, self.out_channels, h, w)  # [B, C_out, H, W]

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer param groups (muP lr / weight-decay multipliers when config.mup; no decay on vectors)."""
        return mup_lib.param_groups(
            self,
            lr,
            weight_decay,
            mup=self.config.mup,
            hidden_size=self.config.hidden_size,
            base_width=self.config.mup_base_width,
            input_prefixes=self._input_prefixes,
            output_prefixes=self._output_prefixes,
            vector_prefixes=self._vector_prefixes,
            mup_depth=self.config.mup_depth,
            depth=self.num_blocks,
            base_depth=self.config.mup_base_depth,
            block_prefixes=self._block_prefixes,
        )


class DiT(AdaLNTransformer):
    """Class-conditional DiT: forward(x [B,C,H,W], t [B] in [0,1], y [B] long) -> [B, C_out, H, W]."""

    arch_name = "DiT"
    cond_keys = ("y",)
    _input_prefixes = ("x_embedder", "t_embedder.mlp.0", "g_embedder.mlp.0", "y_embedder")
    _keep_prefixes = ("y_embedder", "t_embedder.mlp.0")  # DiT's N(0, 0.02) init is width independent already
    _vector_prefixes = ("y_embedder",)
    _block_prefixes = ("blocks",)
    _normal_init = ("y_embedder.embedding_table.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight")

    def __init__(self, config: DiTConfig):
        super().__init__()
        self._init_input(config)
        d = config.hidden_size
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d)
        self.g_embedder = TimestepEmbedder(d) if config.guidance_embed else None
        self._init_pos_embed()
        if self.pos_embed is None:
            grid = config.input_size // config.patch_size
            cos, sin = self._rope_tables(grid, grid)
            self.register_buffer("rope_cos", cos, persistent=False)  # [N, d]
            self.register_buffer("rope_sin", sin, persistent=False)  # [N, d]
        spec = self._block_spec()
        self.blocks = nn.ModuleList(DiTBlock(spec) for _ in range(config.depth))
        self._init_output()

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        t, h, w = self._check_input(x, t)  # [B]
        x = x.to(self.x_embedder.proj.weight.dtype)  # latents may arrive as float16 from the dataset
        tokens = self.x_embedder(x)  # [B, N, D]
        rope = None
        if self.pos_embed is not None:
            tokens = tokens + self._pos_embed_for(h, w)  # [B, N, D]
        else:
            rope = self._rope_for(h, w)  # ([N, d], [N, d])
        c_act = self._conditioning(t, self.y_embedder(y), guidance)  # [B, D]
        for block in self.blocks:
            tokens = run_block(block, self.activation_checkpointing, tokens, c_act, rope)  # [B, N, D]
        return self._readout(tokens, c_act, h, w)  # [B, C_out, H, W]

    def _rope_for(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.patch_size
        if h == w == self.config.input_size:
            return self.rope_cos, self.rope_sin
        cos, sin = self._rope_tables(h // p, w // p, device=self.rope_cos.device)
        return cos.to(self.rope_cos.dtype), sin.to(self.rope_sin.dtype)
