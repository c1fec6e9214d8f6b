"""Precompute: images + captions -> VAE latents, text embeddings and FID reference statistics (Ray Data)."""
