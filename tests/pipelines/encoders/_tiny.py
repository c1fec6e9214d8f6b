"""Tiny random diffusers autoencoders for the VAE tests (seeded: the same weights every time)."""

from __future__ import annotations

import torch


def tiny_autoencoder(block_out_channels: tuple[int, ...], *, norm_num_groups: int = 8, sample_size: int = 16, **kwargs):
    """AutoencoderKL with one level per entry of block_out_channels (downsample 2^(levels-1)), one layer per
    block, 4 latent channels; `kwargs` go to AutoencoderKL (e.g. scaling_factor, shift_factor)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    levels = len(block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        **kwargs,
    )
