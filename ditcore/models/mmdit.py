"""MM-DiT: text-conditional Diffusion Transformer with joint image-text attention (SD3, Esser et al. 2024).

Options of the same model (no copies of it):
  * `num_single_blocks`: FLUX-style single-stream parallel blocks after the dual-stream (joint) blocks;
  * `pos_embed="rope"`: axial 2D RoPE on image tokens (text tokens sit at position (0, 0), as in FLUX)
    instead of the fixed sin-cos table added to the image tokens.
Text padding (text_mask False) is masked out as attention keys everywhere and zeroed at the input, so
padded positions can never change the image output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ditcore.config import check_ints
from ditcore.models.dit import AdaLNTransformer, BlockSpec, TransformerConfig
from ditcore.models.layers import (
    AdaLNModulation,
    Mlp,
    PooledTextEmbedder,
    QKNorm,
    TimestepEmbedder,
    apply_rope,
    attention,
    gated_residual,
    layer_norm,
    modulate,
    run_block,
    split_heads,
)


@dataclass(frozen=True)
class MMDiTConfig(TransformerConfig):
    """MM-DiT architecture: `depth` joint (dual-stream) blocks, then `num_single_blocks` single-stream blocks."""

    arch: str = "mmdit"
    depth: int = 2  # joint blocks: image and text streams with their own weights, one attention over both
    hidden_size: int = 128  # width of both streams
    num_heads: int = 2
    text_dim: int = 384  # width of the per-token text embeddings (all-MiniLM-L6-v2: 384)
    pooled_dim: int = 384  # width of the pooled caption embedding, added to the timestep embedding
    max_text_len: int = 77  # text tokens per caption (padded or cut)
    num_single_blocks: int = 0  # single-stream blocks after the joint ones (FLUX's layout)
    qk_norm: bool = True  # RMSNorm on queries and keys (SD3), which keeps the attention logits bounded

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ints(self, ("text_dim", "pooled_dim", "max_text_len"), 1)
        check_ints(self, ("num_single_blocks",), 0)
        if self.depth + self.num_single_blocks < 1:
            raise ValueError("MMDiTConfig: depth + num_single_blocks must be >= 1")

    @property
    def out_channels(self) -> int:
        """Output channels (= in_channels; MM-DiT has no learned sigma)."""
        return self.in_channels


class JointQKNorm(nn.Module):
    """Per-modality RMSNorm gains applied to the concatenated [image; text] q and k in one kernel each."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.img = QKNorm(head_dim, eps)
        self.txt = QKNorm(head_dim, eps)

    def forward(self, q: torch.Tensor, k: torch.Tensor, n_img: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = q.shape[-1]
        n_txt = q.shape[-2] - n_img

        def gains(a: nn.RMSNorm, b: nn.RMSNorm) -> torch.Tensor:
            return torch.cat([a.weight.expand(n_img, d), b.weight.expand(n_txt, d)])  # [N+L, d]

        q = F.rms_norm(q, (d,), eps=self.eps) * gains(self.img.q_norm, self.txt.q_norm)  # [B, H, N+L, d]
        k = F.rms_norm(k, (d,), eps=self.eps) * gains(self.img.k_norm, self.txt.k_norm)  # [B, H, N+L, d]
        return q, k


class JointBlock(nn.Module):
    """SD3 dual-stream block: per-modality adaLN-Zero, qkv, out-proj and MLP; one attention over both.

    `pre_only` (SD3's last block, `context_pre_only`) keeps only the text keys/values: its text output would
    never be used, so the text out-proj and MLP are not built.
    """

    def __init__(self, spec: BlockSpec, pre_only: bool):
        super().__init__()
        self.num_heads = spec.num_heads
        self.scale = spec.attn_scale
        self.pre_only = pre_only
        self.branch_mult = spec.branch_mult
        d = spec.hidden_size
        self.img_mod = AdaLNModulation(d, 6)
        self.img_qkv = nn.Linear(d, 3 * d)
        self.img_proj = nn.Linear(d, d)
        self.img_mlp = Mlp(d, spec.mlp_hidden)
        self.txt_mod = AdaLNModulation(d, 2 if pre_only else 6)
        self.txt_qkv = nn.Linear(d, 3 * d)
        if not pre_only:
            self.txt_proj = nn.Linear(d, d)
            self.txt_mlp = Mlp(d, spec.mlp_hidden)
        self.qk_norm = JointQKNorm(d // spec.num_heads) if spec.qk_norm else None

    def forward(self, img, txt, c_act, rope=None, attn_mask=None):
        n = img.shape[1]
        i_shift, i_scale, i_gate, i_shift2, i_scale2, i_gate2 = self.img_mod(c_act)  # 6 x [B, D]
        t_mods = self.txt_mod(c_act)  # 2 or 6 x [B, D]
        img_qkv = self.img_qkv(modulate(layer_norm(img), i_shift, i_scale))  # [B, N, 3D]
        txt_qkv = self.txt_qkv(modulate(layer_norm(txt), t_mods[0], t_mods[1]))  # [B, L, 3D]
        # One copy of qkv for the joint sequence; heads are views of it.
        q, k, v = split_heads(torch.cat([img_qkv, txt_qkv], dim=1), self.num_heads)  # [B, H, N+L, d] x 3
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k, n)  # [B, H, N+L, d]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # [B, H, N+L, d]
        out = attention(q, k, v, attn_mask, self.scale)  # [B, N+L, D]
        bm = self.branch_mult
        img = gated_residual(img, i_gate, self.img_proj(out[:, :n]), bm)  # [B, N, D]
        img = gated_residual(img, i_gate2, self.img_mlp(modulate(layer_norm(img), i_shift2, i_scale2)), bm)  # [B, N, D]
        if self.pre_only:
            return img, None
        _, _, t_gate, t_shift2, t_scale2, t_gate2 = t_mods
        txt = gated_residual(txt, t_gate, self.txt_proj(out[:, n:]), bm)  # [B, L, D]
        txt = gated_residual(txt, t_gate2, self.txt_mlp(modulate(layer_norm(txt), t_shift2, t_scale2)), bm)  # [B, L, D]
        return img, txt


class SingleBlock(nn.Module):
    """FLUX single-stream parallel block: one Linear makes qkv and the MLP input, one Linear merges both."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.num_heads = spec.num_heads
        self.hidden_size = d = spec.hidden_size
        self.scale = spec.attn_scale
        self.branch_mult = spec.branch_mult
        self.mod = AdaLNModulation(d, 3)
        self.linear1 = nn.Linear(d, 3 * d + spec.mlp_hidden)
        self.linear2 = nn.Linear(d + spec.mlp_hidden, d)
        self.qk_norm = QKNorm(d // spec.num_heads) if spec.qk_norm else None

    def forward(self, x, c_act, rope=None, attn_mask=None):
        shift, scale, gate = self.mod(c_act)  # 3 x [B, D]
        h = self.linear1(modulate(layer_norm(x), shift, scale))  # [B, N+L, 3D+M]
        qkv, mlp_in = h.split([3 * self.hidden_size, h.shape[-1] - 3 * self.hidden_size], dim=-1)
        q, k, v = split_heads(qkv, self.num_heads)  # [B, H, N+L, d] x 3 (views)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)  # [B, H, N+L, d]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # [B, H, N+L, d]
        attn = attention(q, k, v, attn_mask, self.scale)  # [B, N+L, D]
        out = self.linear2(torch.cat([attn, F.gelu(mlp_in, approximate="tanh")], dim=-1))  # [B, N+L, D]
        return gated_residual(x, gate, out, self.branch_mult)  # [B, N+L, D]


class MMDiT(AdaLNTransformer):
    """forward(x [B,C,H,W], t [B], text_emb [B,L,Dt], text_mask [B,L] bool (True=real), text_pooled [B,Dp])."""

    arch_name = "MMDiT"
    cond_keys = ("text_emb", "text_mask", "text_pooled")
    _input_prefixes = (
        "x_embedder",
        "t_embedder.mlp.0",
        "g_embedder.mlp.0",  # a guidance embedder (distilled students): its input width is fixed too
        "context_embedder",
        "pooled_embedder.mlp.0",
    )
    _keep_prefixes = ("t_embedder.mlp.0",)
    _block_prefixes = ("joint_blocks", "single_blocks")  # depth-muP counts both: L = depth + num_single_blocks
    _normal_init = ("t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight")

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self._init_input(config)
        d = config.hidden_size
        self.context_embedder = nn.Linear(config.text_dim, d)
        self.t_embedder = TimestepEmbedder(d)
        self.pooled_embedder = PooledTextEmbedder(config.pooled_dim, d)
        self.g_embedder = TimestepEmbedder(d) if config.guidance_embed else None
        self._init_pos_embed()
        spec = self._block_spec()  # depth-muP counts joint and single-stream blocks alike
        last = config.depth - 1 if config.num_single_blocks == 0 else -1  # SD3: the last block is pre-only
        self.joint_blocks = nn.ModuleList(JointBlock(spec, pre_only=(i == last)) for i in range(config.depth))
        self.single_blocks = nn.ModuleList(SingleBlock(spec) for _ in range(config.num_single_blocks))
        self._init_output()

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_pooled: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        t, h, w = self._check_input(x, t)  # [B]
        b = x.shape[0]
        if text_emb.ndim != 3 or text_emb.shape[0] != b or text_emb.shape[-1] != self.config.text_dim:
            raise ValueError(f"MMDiT: text_emb must be [B={b}, L, {self.config.text_dim}], got {tuple(text_emb.shape)}")
        p = self.patch_size
        # Latents / text features may arrive as float16 from the dataset; compute in the parameter dtype.
        dtype = self.x_embedder.proj.weight.dtype
        x, text_emb, text_pooled = x.to(dtype), text_emb.to(dtype), text_pooled.to(dtype)
        img = self.x_embedder(x)  # [B, N, D]
        n, n_txt = img.shape[1], text_emb.shape[1]
        attn_mask = None
        if text_mask is not None:
            if text_mask.shape != text_emb.shape[:2]:
                raise ValueError(f"MMDiT: text_mask must be {tuple(text_emb.shape[:2])}, got {tuple(text_mask.shape)}")
            text_mask = text_mask.bool()
            # Zero padded embeddings so even non-finite padding cannot leak (0 * inf) through the masked keys.
            text_emb = torch.where(
                text_mask[..., None], text_emb, torch.zeros((), dtype=text_emb.dtype, device=text_emb.device)
            )
            # An all-real mask is dropped so SDPA can take its unmasked fast path (meta tensors cannot be inspected).
            if text_mask.device.type == "meta" or not bool(text_mask.all()):
                keep = torch.cat([text_mask.new_ones(b, n), text_mask], dim=1)  # [B, N+L]
                attn_mask = keep[:, None, None, :]  # [B, 1, 1, N+L]: padded text is never a key
        txt = self.context_embedder(text_emb)  # [B, L, D]
        rope = None
        if self.pos_embed is not None:
            img = img + self._pos_embed_for(h, w)  # [B, N, D]
        else:
            cos, sin = self._rope_tables(h // p, w // p, n_txt, img.device)  # [N+L, d] each
            rope = (cos.to(img.dtype), sin.to(img.dtype))
        c_act = self._conditioning(t, self.pooled_embedder(text_pooled), guidance)  # [B, D]
        for block in self.joint_blocks:
            # [B, N, D], [B, L, D] | None
            img, txt = run_block(block, self.activation_checkpointing, img, txt, c_act, rope, attn_mask)
        if len(self.single_blocks):
            joint = torch.cat([img, txt], dim=1)  # [B, N+L, D]
            for block in self.single_blocks:
                joint = run_block(block, self.activation_checkpointing, joint, c_act, rope, attn_mask)  # [B, N+L, D]
            img = joint[:, :n]  # [B, N, D]
        return self._readout(img, c_act, h, w)  # [B, C, H, W]
