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

# A VAE that trains in a second: 3 steps of 4 images, 8-16 channels, one thread, no progress bar.
TINY = dict(
    steps=3,
    batch_size=4,
    block_out_channels=[8, 8, 16],
    norm_num_groups=8,
    scale_images=8,
    eval_images=4,
    progress=False,
    threads=1,
)


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


def _parquet_source(path, n: int = 30) -> None:
    """A parquet split as `ditscale data fetch` writes it: id, PNG image, caption, label."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        arr = np.zeros((28, 28), np.uint8)
        arr[6:22, 6 + i % 6 : 14 + i % 6] = 200 + i  # a bright bar on black, as Fashion-MNIST's background
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr + rng.integers(0, 20, arr.shape), 0, 255).astype(np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    path.mkdir()
    table = pa.table(
        {"id": [f"r{i}" for i in range(n)], "image": images, "caption": ["x"] * n, "label": [i % 3 for i in range(n)]}
    )
    pq.write_table(table, path / "part-00000.parquet")


def test_train_on_a_parquet_source(tmp_path, capsys):
    _parquet_source(tmp_path / "train")
    cfg = from_dict(
        TrainVAEConfig,
        {**TINY, "image_size": 28, "block_out_channels": [8, 8], "out": str(tmp_path / "vae"),
         "source": {"kind": "parquet", "path": str(tmp_path / "train"), "limit": 25}},
    )  # fmt: skip
    out = train_vae(cfg)
    text = capsys.readouterr().out
    # limit 25 of 30 rows; eval_images 4 (<= a fifth) held out, the rest trained on.
    assert "21 training and 4 held-out images" in text and "on 4 images" in text
    summary = json.loads((tmp_path / "vae" / "train_summary.json").read_text())
    assert summary["data"]["train_images"] == 21 and summary["data"]["source"]["path"] == str(tmp_path / "train")
    assert summary["eval_images"] == 4 and math.isfinite(summary["psnr_db"]) and summary["scaling_factor"] > 0
    vae = load_vae(out)
    assert vae.config.sample_size == 28
    # Through the CLI, with the source given as dotted overrides; an empty source is an error naming the path.
    argv = [
        "train-vae",
        *(f"{k}={json.dumps(v)}" for k, v in TINY.items()),
        "image_size=28",
        "block_out_channels=[8,8]",
    ]
    assert data_main([*argv, "source.kind=parquet", f"source.path={tmp_path / 'train'}", f"out={tmp_path / 'v2'}"]) == 0
    (tmp_path / "empty").mkdir()
    assert data_main([*argv, "source.kind=folder", f"source.path={tmp_path / 'empty'}", f"out={tmp_path / 'v3'}"]) == 2
    assert "empty" in capsys.readouterr().err and not (tmp_path / "v3").exists()
