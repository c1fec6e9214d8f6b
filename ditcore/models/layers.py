"""Shared Diffusion Transformer layers: patchify, positional embeddings, conditioning, attention, MLP.

Pure PyTorch. Every layer here is used by both DiT (models/dit.py) and MM-DiT (models/mmdit.py); the U-Net
(models/unet.py) reuses the conditioning embedders and the attention helpers.
Performance notes (the CPU step is matmul-bound, so the rest must stay out of the way):
  * qkv is one fused Linear; heads are views of its output, never copies, until SDPA;
  * attention is `F.scaled_dot_product_attention` (flash kernel on CPU and GPU);
  * adaLN modulation and gated residuals are single `addcmul` kernels instead of 2-3 elementwise ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# Patchify
# --------------------------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C] tokens in row-major patch order, features ordered (p, p, C).

    The same feature order as `unpatchify` (the DiT reference output layout), so the two are exact inverses.
    """
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"patchify: spatial size {h}x{w} is not divisible by patch_size={p}")
    x = x.reshape(b, c, h // p, p, w // p, p)  # [B, C, h, p, w, p]
    x = x.permute(0, 2, 4, 3, 5, 1)  # [B, h, w, p, p, C]
    return x.reshape(b, (h // p) * (w // p), p * p * c)  # [B, N, p*p*C]


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """[B, N, p*p*C] (features ordered (p, p, C) as in the DiT reference) -> [B, C, H, W]."""
    b, n, d = tokens.shape
    p = patch_size
    h, w = height // p, width // p
    if n != h * w or d != p * p * channels:
        raise ValueError(f"unpatchify: got tokens {tuple(tokens.shape)} for {channels}x{height}x{width}, patch {p}")
    x = tokens.reshape(b, h, w, p, p, channels)  # [B, h, w, p, p, C]
    x = x.permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
    return x.reshape(b, channels, height, width)  # [B, C, H, W]


class PatchEmbed(nn.Module):
    """Linear patch embedding (equivalent to the DiT Conv2d(kernel=stride=p), without the conv overhead)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size * patch_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, self.patch_size))  # [B, N, D]


# --------------------------------------------------------------------------------------------
# Positional embeddings
# --------------------------------------------------------------------------------------------


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE/DiT 1D sin-cos embedding: [M] positions -> [M, dim] (first half sin, second half cos)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = pos.to(torch.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # [M, dim]


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 2D sin-cos positional embedding (DiT/MAE): [grid_h*grid_w, dim], row-major token order, float32."""
    if dim % 4:
        raise ValueError(f"sincos_pos_embed_2d: dim={dim} must be divisible by 4")
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64, device=device),
        torch.arange(grid_w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    # As in the DiT reference: first half of the channels encodes w (x), second half h (y).
    emb = torch.cat([_sincos_1d(dim // 2, xs.reshape(-1)), _sincos_1d(dim // 2, ys.reshape(-1))], dim=1)
    return emb.float()  # [N, dim]


def rope_2d_freqs(
    head_dim: int,
    pos_h: torch.Tensor,
    pos_w: torch.Tensor,
    theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2D RoPE tables for positions [N]: (cos, sin) each [N, head_dim].

    Half of each head's channels rotate with the row index, half with the column index
    (axial RoPE as in FLUX / "Rotary Position Embedding for Vision Transformer"), so the
    attention logit q_i.k_j depends only on (row_i - row_j, col_i - col_j).
    Channel pairs are (c, c + d/2) within each axis half (the "rotate_half" convention).
    """
    if head_dim % 4:
        raise ValueError(f"rope_2d_freqs: head_dim={head_dim} must be divisible by 4")
    quarter = head_dim // 4
    inv = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64, device=pos_h.device) / quarter)  # [d/4]
    ang_h = pos_h.to(torch.float64)[:, None] * inv  # [N, d/4]
    ang_w = pos_w.to(torch.float64)[:, None] * inv  # [N, d/4]
    # Layout per axis half: [angles, angles] so rotate_half pairs c with c + d/4 inside that half.
    ang = torch.cat([ang_h, ang_h, ang_w, ang_w], dim=1)  # [N, d]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, N, d] by per-position tables cos/sin [N, d] (axial halves, rotate_half pairing)."""
    d = x.shape[-1]
    q = d // 4
    x1, x2, x3, x4 = x.split(q, dim=-1)  # each [B, H, N, d/4]
    rot = torch.cat([-x2, x1, -x4, x3], dim=-1)  # [B, H, N, d]: rotate_half within each axis half
    return torch.addcmul(x * cos, rot, sin)  # [B, H, N, d]


def grid_positions(
    grid_h: int, grid_w: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index [N] of each token in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
    return ys.reshape(-1), xs.reshape(-1)


# --------------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of 1000*t (continuous t in [0, 1]: t = 0 data, t = 1 noise): [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None]  # [B, dim/2]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, dim] (ADM/DiT order: cos, sin)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t [B] -> sinusoidal(1000 t) -> Linear-SiLU-Linear -> [B, D] (DiT section 3.2)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size)  # [B, F]
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # [B, D]


class LabelEmbedder(nn.Module):
    """Class label -> [B, D]; row `num_classes` is the learned null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)  # [B, D]


class PooledTextEmbedder(nn.Module):
    """Pooled text embedding [B, Dp] -> Linear-SiLU-Linear -> [B, D] (SD3 "pooled projection")."""

    def __init__(self, pooled_dim: int, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(pooled_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)  # [B, D]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift, with shift/scale [B, D] broadcast over tokens of x [B, N, D]."""
    return torch.addcmul(shift.unsqueeze(1), x, scale.unsqueeze(1) + 1.0)  # [B, N, D]


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, mult: float = 1.0) -> torch.Tensor:
    """adaLN-Zero residual x + mult * gate * y, gate [B, D] (zero at init, so the block starts as the identity).

    `mult` is the depth-muP branch multiplier (1 unless config.mup_depth); addcmul's `value` applies it in the
    same kernel, and value=1 is addcmul's own default, so the result is unchanged when it is off.
    """
    return torch.addcmul(x, gate.unsqueeze(1), y, value=mult)  # [B, N, D]


class AdaLNModulation(nn.Module):
    """c [B, D] -> SiLU -> Linear -> `n` chunks of [B, D]; zero-initialised (adaLN-Zero, DiT section 3.2)."""

    def __init__(self, hidden_size: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(hidden_size, n * hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_act: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c_act is SiLU(c), computed once per forward and shared by every block."""
        return self.linear(c_act).chunk(self.n, dim=-1)  # n x [B, D]


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Affine-free LayerNorm (the affine part is the adaLN modulation)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


# --------------------------------------------------------------------------------------------
# Attention and MLP
# --------------------------------------------------------------------------------------------


class QKNorm(nn.Module):
    """Per-head RMSNorm on queries and keys (stabilises attention logits; SD3 section 5.3.2)."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.q_norm = nn.RMSNorm(head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=eps)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)  # [B, H, N, d] each


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused qkv [B, N, 3D] -> q, k, v [B, H, N, d] as strided views (no copy; SDPA takes strides)."""
    b, n, three_d = qkv.shape
    d = three_d // (3 * num_heads)
    # unbind on the (3) axis + transpose: the backward is a single stack straight into the qkv layout
    # (indexing a permuted [3, B, H, N, d] view would zero-fill and copy 3 full-size grads instead).
    q, k, v = qkv.view(b, n, 3, num_heads, d).unbind(2)  # [B, N, H, d] x 3 (views)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, N, d] x 3 (views)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] -> [B, N, H*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)  # [B, N, D]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA on [B, H, N, d]; attn_mask is bool [B, 1, 1, N_k] (True = attend) or None -> [B, N, D]."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)  # [B, H, N, d]
    return merge_heads(out)  # [B, N, D]


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv, optional QK RMSNorm, optional 2D RoPE, SDPA, output projection."""

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool = False, scale: float | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = scale
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.norm = QKNorm(self.head_dim) if qk_norm else None
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), self.num_heads)  # [B, H, N, d] x 3
        if self.norm is not None:
            q, k = self.norm(q, k)  # [B, H, N, d]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # [B, H, N, d]
        return self.proj(attention(q, k, v, attn_mask, self.scale))  # [B, N, D]


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear (the ViT/DiT MLP)."""

    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # [B, N, D]


class FinalLayer(nn.Module):
    """adaLN (shift, scale) -> affine-free LayerNorm -> Linear to p*p*C_out; zero-initialised (outputs 0 at init)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.adaLN_modulation = AdaLNModulation(hidden_size, 2)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c_act: torch.Tensor, output_mult: float = 1.0) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c_act)  # [B, D] x 2
        h = modulate(layer_norm(x), shift, scale)  # [B, N, D]
        if output_mult != 1.0:
            # muP readout multiplier (1/width_mult) applied to the input keeps the matmul count identical.
            h = h * output_mult  # [B, N, D]
        return self.linear(h)  # [B, N, p*p*C_out]


# --------------------------------------------------------------------------------------------
# Activation checkpointing
# --------------------------------------------------------------------------------------------


def run_block(block: nn.Module, checkpointed: bool, *args):
    """block(*args), recomputed in the backward pass instead of keeping its activations when `checkpointed`.

    Non-reentrant torch.utils.checkpoint: the forward and the gradients are the same as without it (the RNG state
    is restored for the recomputation); only the activation memory of the block drops to its inputs. The block is
    still called as a module, so FSDP2's per-block hooks run as usual (they skip the recomputation's unshard).
    """
    if checkpointed and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn activation checkpointing of every transformer block of a DiT / MM-DiT on or off (in place)."""
    if not hasattr(model, "activation_checkpointing"):
        raise ValueError(f"{type(model).__name__} has no transformer blocks to checkpoint (DiT and MM-DiT do)")
    model.activation_checkpointing = bool(enabled)
    return model
