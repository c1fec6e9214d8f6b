"""ADM U-Net baseline (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 3), class- or text-conditional.

Architecture (ADM Sec. 3 with adaptive group normalization, Sec. 3.1, and 64 channels per head; resampling is
a strided conv / nearest + conv as in the DDPM U-Net, not ADM's BigGAN-style residual up/down blocks):
  * residual blocks GroupNorm-SiLU-conv, GroupNorm-(adaptive scale/shift from the embedding)-SiLU-dropout-conv;
  * self-attention after the residual blocks at the levels in `attention_levels` and in the middle block;
  * a down path of `len(channel_mult)` levels (stride-2 conv between levels), a middle block, and an up path
    that concatenates every down-path activation as a skip (nearest upsampling + conv between levels);
  * the last conv of every residual block, every attention output projection and the output conv are
    zero-initialised (ADM `zero_module`): a fresh model outputs exactly 0, like adaLN-Zero DiT.
Conditioning goes through one embedding e = MLP(sinusoid(1000 t)) (+ label embedding, null class at index
num_classes, ADM) or (+ MLP(text_pooled), the SDXL pooled "add embedding"), shared by every residual block.
Text models (text_dim > 0) also cross-attend from the image to text_emb after each self-attention, with text
padding masked out, as the latent-diffusion / Stable Diffusion U-Net does (Rombach et al. 2022, Sec. 3.3:
Q from the image features, K and V from the text tokens).
No muP: `mup=True` is rejected; param_groups are plain AdamW groups (no decay on vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ditcore.config import check_ints
from ditcore.models import mup as mup_lib
from ditcore.models.layers import LabelEmbedder, PooledTextEmbedder, TimestepEmbedder, attention, split_heads


@dataclass(frozen=True)
class UNetConfig:
    """ADM U-Net. hidden_size = ADM model_channels (width of level 0); text_dim > 0 selects text conditioning."""

    arch: str = "unet"
    hidden_size: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2)  # level l has hidden_size * channel_mult[l] channels
    num_res_blocks: int = 2  # residual blocks per level (the decoder has one more)
    attention_levels: tuple[int, ...] = (1, 2)  # levels with self-attention after their res blocks
    head_channels: int = 64  # channels per attention head (ADM's num_head_channels)
    num_groups: int = 32  # GroupNorm groups
    input_size: int = 32  # latent height = width
    in_channels: int = 4
    num_classes: int = 1000  # class conditioning (when text_dim == 0); the label num_classes is the null class
    text_dim: int = 0  # > 0: cross-attention to text tokens of this width
    pooled_dim: int = 0  # pooled caption embedding added to the timestep embedding
    max_text_len: int = 77
    learn_sigma: bool = False
    dropout: float = 0.0
    mup: bool = False

    def __post_init__(self) -> None:
        # JSON (and sweep overrides) hand lists; store tuples so configs stay hashable and compare equal.
        for key in ("channel_mult", "attention_levels"):
            v = getattr(self, key)
            if not isinstance(v, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in v):
                raise ValueError(f"UNetConfig.{key} must be a list of ints, got {v!r}")
            object.__setattr__(self, key, tuple(v))
        if self.arch != "unet":
            raise ValueError(f"UNetConfig.arch must be 'unet', got {self.arch!r}")
        check_ints(
            self, ("hidden_size", "num_res_blocks", "head_channels", "num_groups", "input_size", "in_channels"), 1
        )
        check_ints(self, ("num_classes", "text_dim", "pooled_dim", "max_text_len"), 0)
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"UNetConfig.channel_mult must be a non-empty list of ints >= 1, got {self.channel_mult}")
        bad = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mult)]
        if bad:
            raise ValueError(f"UNetConfig.attention_levels {bad} out of range for {len(self.channel_mult)} levels")
        if self.hidden_size % self.num_groups:
            raise ValueError(
                f"UNetConfig.hidden_size={self.hidden_size} is not divisible by num_groups={self.num_groups}"
            )
        for lv in (*self.attention_levels, len(self.channel_mult) - 1):  # the middle block attends at the last
            ch = self.hidden_size * self.channel_mult[lv]
            if ch % self.head_channels:
                raise ValueError(
                    f"UNetConfig.head_channels={self.head_channels} does not divide the {ch} channels of level {lv}"
                )
        if self.input_size % self.downsample:
            raise ValueError(
                f"UNetConfig.input_size={self.input_size} is not divisible by {self.downsample} "
                f"({len(self.channel_mult)} levels)"
            )
        if (self.num_classes > 0) == (self.text_dim > 0):
            raise ValueError(
                "UNetConfig: set exactly one of num_classes > 0 (class labels) or text_dim > 0 (text), "
                f"got num_classes={self.num_classes}, text_dim={self.text_dim}"
            )
        if self.text_dim and (self.pooled_dim < 1 or self.max_text_len < 1):
            raise ValueError("UNetConfig: a text model (text_dim > 0) needs pooled_dim >= 1 and max_text_len >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.mup:
            raise ValueError(
                "UNetConfig.mup: muP is not implemented for the U-Net (it has plain AdamW param groups); "
                "use a DiT / MM-DiT for muP runs"
            )

    @property
    def out_channels(self) -> int:
        """Output channels: 2C with learned sigma (prediction first, then the variance interpolation)."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def emb_dim(self) -> int:
        """Width of the timestep / class / pooled-text embedding (ADM: 4 x model_channels)."""
        return 4 * self.hidden_size

    @property
    def downsample(self) -> int:
        """Total downsampling 2^(levels-1): input_size (and any sampled size) must be divisible by it."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def patch_size(self) -> int:
        """1: the U-Net works on every latent position (no patchify); kept for tools that print patch sizes."""
        return 1

    @property
    def num_tokens(self) -> int:
        """Spatial positions at the first level, input_size^2 (the token count of a patch-1 model)."""
        return self.input_size**2

    @property
    def depth(self) -> int:
        """Residual blocks on the input-to-output path: L (n + n + 1) + 2 for L levels of n blocks."""
        return len(self.channel_mult) * (2 * self.num_res_blocks + 1) + 2

    @property
    def num_heads(self) -> int:
        """Attention heads of the middle block (heads elsewhere = channels / head_channels)."""
        return self.hidden_size * self.channel_mult[-1] // self.head_channels


class StageSpec(NamedTuple):
    """One U-Net stage: [ResBlock res_in -> channels] [+ attention] [+ resample], at input resolution / ds."""

    res_in: int  # ResBlock input channels (0: no ResBlock, a resample-only stage)
    channels: int  # output channels
    ds: int  # downsampling factor of the stage's input
    attn: bool  # self-attention (+ cross-attention for text models) after the ResBlock
    resample: str  # "" | "down" | "up"


def unet_plan(cfg: UNetConfig) -> tuple[int, list[StageSpec], list[StageSpec], list[StageSpec]]:
    """(stem channels, down stages, middle stages, up stages) in ADM's order; the model and ditcore.flops use it."""
    ch = cfg.hidden_size * cfg.channel_mult[0]
    stem = ch
    skips, ds = [ch], 1
    down: list[StageSpec] = []
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out = cfg.hidden_size * mult
            down.append(StageSpec(ch, out, ds, level in cfg.attention_levels, ""))
            ch = out
            skips.append(ch)
        if level != len(cfg.channel_mult) - 1:
            down.append(StageSpec(0, ch, ds, False, "down"))
            ds *= 2
            skips.append(ch)
    # ADM middle block: ResBlock, attention, ResBlock.
    middle = [StageSpec(ch, ch, ds, True, ""), StageSpec(ch, ch, ds, False, "")]
    up: list[StageSpec] = []
    for level in reversed(range(len(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            out = cfg.hidden_size * cfg.channel_mult[level]
            last = level > 0 and i == cfg.num_res_blocks
            up.append(StageSpec(ch + skips.pop(), out, ds, level in cfg.attention_levels, "up" if last else ""))
            ch = out
            if last:
                ds //= 2
    return stem, down, middle, up


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of a module (ADM `zero_module`) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block with scale-shift norm: skip(x) + conv(drop(SiLU(GN(h) (1 + s) + b))); 2nd conv zero."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.in_norm = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.out_norm = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.in_norm(x)))  # [B, Co, H, W]
        scale, shift = self.emb(emb_act)[:, :, None, None].chunk(2, dim=1)  # [B, Co, 1, 1] x 2 (ADM order)
        h = torch.addcmul(shift, self.out_norm(h), scale + 1.0)  # [B, Co, H, W]: adaptive group norm
        h = self.conv2(self.dropout(F.silu(h)))  # [B, Co, H, W]
        return self.skip(x) + h  # [B, Co, H, W]


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C] (row-major positions)."""
    return x.flatten(2).transpose(1, 2)  # [B, N, C]


def _to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)  # [B, C, H, W]


class SelfAttention(nn.Module):
    """ADM attention block: x + proj(MHSA(GroupNorm(x))) over the H*W positions; proj zero-initialised."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.num_heads = channels // head_channels
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)  # a 1x1 conv on channels-last positions
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = split_heads(self.qkv(_to_tokens(self.norm(x))), self.num_heads)  # [B, heads, N, d] x 3
        return x + _to_map(self.proj(attention(q, k, v)), h, w)  # [B, C, H, W]


class CrossAttention(nn.Module):
    """x + proj(MHA(q = GroupNorm(x), k, v = text tokens)), padded text masked; proj zero-initialised (LDM 3.3)."""

    def __init__(self, channels: int, head_channels: int, groups: int, text_dim: int):
        super().__init__()
        self.num_heads = channels // head_channels
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(text_dim, 2 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.num_heads
        q = self.q(_to_tokens(self.norm(x))).view(b, h * w, self.num_heads, d).transpose(1, 2)  # [B, heads, N, d]
        k, v = self.kv(text).view(b, text.shape[1], 2, self.num_heads, d).unbind(2)  # [B, L, heads, d] x 2
        out = attention(q, k.transpose(1, 2), v.transpose(1, 2), mask)  # [B, N, C]
        return x + _to_map(self.proj(out), h, w)  # [B, C, H, W]


class Downsample(nn.Module):
    """Stride-2 3x3 conv (ADM conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # [B, C, H/2, W/2]


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv (ADM conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # [B, C, 2H, 2W]


class Stage(nn.Module):
    """One StageSpec: optional ResBlock, self-attention (+ cross-attention), resample (ADM TimestepEmbedSequential)."""

    def __init__(self, spec: StageSpec, cfg: UNetConfig):
        super().__init__()
        g = cfg.num_groups
        self.res = ResBlock(spec.res_in, spec.channels, cfg.emb_dim, g, cfg.dropout) if spec.res_in else None
        self.attn = SelfAttention(spec.channels, cfg.head_channels, g) if spec.attn else None
        self.cross = (
            CrossAttention(spec.channels, cfg.head_channels, g, cfg.text_dim) if spec.attn and cfg.text_dim else None
        )
        resample = {"": None, "down": Downsample, "up": Upsample}[spec.resample]
        self.resample = resample(spec.channels) if resample is not None else None

    def forward(
        self, h: torch.Tensor, emb_act: torch.Tensor, text: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.res is not None:
            h = self.res(h, emb_act)  # [B, C, H, W]
        if self.attn is not None:
            h = self.attn(h)  # [B, C, H, W]
        if self.cross is not None:
            h = self.cross(h, text, mask)  # [B, C, H, W]
        if self.resample is not None:
            h = self.resample(h)  # [B, C, H/2 | 2H, W/2 | 2W]
        return h


class UNet(nn.Module):
    """forward(x [B,C,H,W], t [B] in [0,1], y [B] long | text_emb, text_mask, text_pooled) -> [B, C_out, H, W]."""

    _input_prefixes = ("conv_in", "t_embedder.mlp.0", "label_embedder", "pooled_embedder.mlp.0")
    _output_prefixes = ("out_conv",)

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.text = config.text_dim > 0
        # Same conditioning convention as DiT / MM-DiT, chosen by the config.
        self.cond_keys = ("text_emb", "text_mask", "text_pooled") if self.text else ("y",)
        e = config.emb_dim
        # ADM: sinusoid of width model_channels -> Linear -> SiLU -> Linear to 4 x model_channels.
        self.t_embedder = TimestepEmbedder(e, frequency_embedding_size=config.hidden_size)
        self.label_embedder = None if self.text else LabelEmbedder(config.num_classes, e)
        self.pooled_embedder = PooledTextEmbedder(config.pooled_dim, e) if self.text else None
        stem, down, middle, up = unet_plan(config)
        self.conv_in = nn.Conv2d(config.in_channels, stem, 3, padding=1)
        self.down = nn.ModuleList(Stage(s, config) for s in down)
        self.middle = nn.ModuleList(Stage(s, config) for s in middle)
        self.up = nn.ModuleList(Stage(s, config) for s in up)
        self.out_norm = nn.GroupNorm(config.num_groups, stem)
        self.out_conv = zero_(nn.Conv2d(stem, config.out_channels, 3, padding=1))
        # Everything else keeps PyTorch's default init, as ADM does (label table N(0, 1), convs / linears uniform).

    def _text_inputs(
        self, text_emb: torch.Tensor | None, text_mask: torch.Tensor | None, b: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checked text tokens with padding zeroed, and the key mask [B, 1, 1, L] (None when nothing is padded)."""
        dt = self.config.text_dim
        if text_emb is None or text_emb.ndim != 3 or text_emb.shape[0] != b or text_emb.shape[-1] != dt:
            got = None if text_emb is None else tuple(text_emb.shape)
            raise ValueError(f"UNet: text_emb must be [B={b}, L, {self.config.text_dim}], got {got}")
        text_emb = text_emb.to(dtype)
        if text_mask is None:
            return text_emb, None
        if text_mask.shape != text_emb.shape[:2]:
            raise ValueError(f"UNet: text_mask must be {tuple(text_emb.shape[:2])}, got {tuple(text_mask.shape)}")
        text_mask = text_mask.bool()
        # Zero padded embeddings so even non-finite padding cannot leak (0 * inf) through the masked keys.
        text_emb = torch.where(text_mask[..., None], text_emb, torch.zeros((), dtype=dtype, device=text_emb.device))
        if text_mask.device.type != "meta" and bool(text_mask.all()):
            return text_emb, None  # SDPA's unmasked fast path (meta tensors cannot be inspected)
        # A prompt with no real token attends to all of its (zeroed, hence identical) positions: its output is
        # the value bias whatever the padding length, and no softmax row is fully masked (which would be NaN).
        keep = text_mask | ~text_mask.any(dim=1, keepdim=True)  # [B, L]
        return text_emb, keep[:, None, None, :]  # [B, 1, 1, L]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        text_emb: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"UNet: expected {self.in_channels} input channels, got x of shape {tuple(x.shape)}")
        ds = self.config.downsample
        if h % ds or w % ds:
            raise ValueError(
                f"UNet: spatial size {h}x{w} is not divisible by {ds} ({len(self.config.channel_mult)} levels)"
            )
        if t.ndim == 0:
            t = t.expand(b)  # one shared time for the batch
        dtype = self.conv_in.weight.dtype
        x = x.to(dtype)  # latents / text features may arrive as float16 from the dataset
        emb = self.t_embedder(t)  # [B, E]
        text, mask = None, None
        if self.text:
            if text_pooled is None:
                raise ValueError("UNet: a text model (text_dim > 0) needs text_emb, text_mask and text_pooled")
            text, mask = self._text_inputs(text_emb, text_mask, b, dtype)  # [B, L, Dt], [B, 1, 1, L] | None
            emb = emb + self.pooled_embedder(text_pooled.to(dtype))  # [B, E]
        else:
            if y is None:
                raise ValueError("UNet: a class-conditional model needs y (num_classes is the null class)")
            emb = emb + self.label_embedder(y)  # [B, E]
        emb_act = F.silu(emb)  # [B, E]; ADM applies SiLU before every block's projection: computed once
        hs = self.conv_in(x)  # [B, C0, H, W]
        skips = [hs]
        for stage in self.down:
            hs = stage(hs, emb_act, text, mask)  # [B, C_l, H/ds, W/ds]
            skips.append(hs)
        for stage in self.middle:
            hs = stage(hs, emb_act, text, mask)  # [B, C_last, H/D, W/D]
        for stage in self.up:
            hs = stage(torch.cat([hs, skips.pop()], dim=1), emb_act, text, mask)  # [B, C_l, H/ds, W/ds]
        return self.out_conv(F.silu(self.out_norm(hs)))  # [B, C_out, H, W]

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Plain AdamW param groups (no muP for the U-Net): lr everywhere, no weight decay on vectors/label table."""
        return mup_lib.param_groups(
            self,
            lr,
            weight_decay,
            mup=False,
            hidden_size=self.config.hidden_size,
            base_width=self.config.hidden_size,
            input_prefixes=self._input_prefixes,
            output_prefixes=self._output_prefixes,
            vector_prefixes=("label_embedder",),
        )
