"""VAE training job: a few steps of a tiny AutoencoderKL, saved in diffusers format with its latent scale."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ditcore.config import ConfigError, from_dict
from ditcore.data.builtin import BuiltinSpec
from pipelines.cli.data import main as data_main
from pipelines.encoders.train_vae import TrainVAEConfig, latent_statistics, train_vae
from pipelines.encoders.vae import encode_images, load_vae, vae_identity

TINY = {
    "steps": 3,
    "batch_size": 4,
    "block_out_channels": [8, 8, 16],
    "norm_num_groups": 8,
    "scale_images": 8,
    "eval_images": 4,
    "progress": False,
    "threads": 1,
}


def test_train_save_load(tmp_path, capsys):
    cfg = from_dict(TrainVAEConfig, {**TINY, "out": str(tmp_path / "vae")})
    out = train_vae(cfg)
    assert out == str(tmp_path / "vae")
    assert "held-out reconstruction PSNR" in capsys.readouterr().out
    vae = load_vae(out)
    ident = vae_identity(vae, out)
    assert ident["downsample"] == 4 and ident["latent_channels"] == 4 and ident["shift_factor"] == 0.0
    summary = json.loads((tmp_path / "vae" / "train_summary.json").read_text())
    assert math.isfinite(summary["psnr_db"]) and summary["steps"] == 3
    assert ident["scaling_factor"] == pytest.approx(summary["scaling_factor"])
    # The stored scale gives unit second moment of the latents it was measured on.
    mean, std = latent_statistics(vae, BuiltinSpec(), 8, seed=0)
    assert math.sqrt(mean**2 + std**2) * ident["scaling_factor"] == pytest.approx(1.0, rel=1e-4)
    m, s = encode_images(vae, torch.zeros(1, 3, 32, 32))
    assert m.shape == (1, 4, 8, 8) and (s > 0).all()


def test_compute_shift_and_cli_overrides(tmp_path):
    cfg_file = tmp_path / "vae.yaml"
    cfg_file.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in TINY.items()) + "\n")
    out = tmp_path / "vae_shift"
    assert data_main(["train-vae", "--config", str(cfg_file), f"out={out}", "compute_shift=true", "steps=1"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 1 and summary["shift_factor"] == pytest.approx(summary["latent_mean"])
    ident = vae_identity(load_vae(out))
    assert ident["shift_factor"] == pytest.approx(summary["latent_mean"])
    assert ident["scaling_factor"] == pytest.approx(1.0 / summary["latent_std"])


def test_config_errors_name_the_key(tmp_path, capsys):
    assert data_main(["train-vae", f"out={tmp_path}", "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="block_out_channels"):
        from_dict(TrainVAEConfig, {"block_out_channels": [10, 20], "norm_num_groups": 8})
    with pytest.raises(ConfigError, match="image_size"):
        from_dict(TrainVAEConfig, {"image_size": 300})
