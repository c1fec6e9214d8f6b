"""Evaluation metrics: FID feature networks (`features`) and the Frechet distance (`fid`)."""
