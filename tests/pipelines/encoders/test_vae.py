"""VAE loader: a tiny random AutoencoderKL saved with save_pretrained and loaded back through load_vae."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditcore.preprocess import images_to_tensor, tensor_to_images
from pipelines.encoders.vae import VAELoadError, decode_to_images, encode_images, load_vae, vae_identity
from tests.conftest import assert_load_errors_name_the_path
from tests.pipelines.encoders._tiny import tiny_autoencoder


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    vae = tiny_autoencoder((8, 8, 16), scaling_factor=0.5, shift_factor=0.25)
    path = tmp_path_factory.mktemp("vae") / "tiny"
    vae.save_pretrained(str(path))
    return path


def _images(n=3, size=16):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_load_encode_decode(tiny_vae_dir):
    vae = load_vae(tiny_vae_dir)
    assert not vae.training and all(not p.requires_grad for p in vae.parameters())
    x = images_to_tensor(_images())
    mean, std = encode_images(vae, x)
    assert mean.shape == std.shape == (3, 4, 4, 4)  # 3 blocks -> downsample 4
    assert mean.dtype == torch.float32 and (std > 0).all()
    # uint8 input is accepted and converted the same way.
    mean_u8, _ = encode_images(vae, _images())
    torch.testing.assert_close(mean_u8, mean)
    out = decode_to_images(vae, (mean - 0.25) * 0.5, 0.5, 0.25)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    with torch.no_grad():
        expected = tensor_to_images(vae.decode(mean).sample)
    np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=1)


def test_identity(tiny_vae_dir):
    vae = load_vae(str(tiny_vae_dir))
    ident = vae_identity(vae, tiny_vae_dir)
    assert ident == {
        "path": str(tiny_vae_dir),
        "revision": None,
        "scaling_factor": 0.5,
        "shift_factor": 0.25,
        "latent_channels": 4,
        "downsample": 4,
    }
    assert vae_identity(vae)["path"] == str(tiny_vae_dir)


def test_dtype_and_subfolder(tiny_vae_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_vae_dir, tmp_path / "pipe" / "vae")
    vae = load_vae(tmp_path / "pipe", dtype=torch.bfloat16, subfolder="vae")
    assert vae.dtype == torch.bfloat16
    mean, std = encode_images(vae, images_to_tensor(_images(1)))
    assert mean.dtype == torch.float32 and mean.shape == (1, 4, 4, 4)
    assert vae_identity(vae)["subfolder"] == "vae"


def test_errors_name_the_path(tmp_path):
    assert_load_errors_name_the_path(load_vae, tmp_path, VAELoadError, "empty.*config.json")
    with pytest.raises(VAELoadError, match="no-such-org/no-such-vae"):
        load_vae("no-such-org/no-such-vae")  # hub id; HF_HUB_OFFLINE=1 in tests


def test_load_from_s3(tiny_vae_dir, s3_bucket):
    from pipelines.infra import storage

    uri = f"{s3_bucket}/models/vae"
    storage.upload_dir(str(tiny_vae_dir), uri)
    vae = load_vae(uri)
    assert vae_identity(vae)["path"] == uri
    mean, _ = encode_images(vae, _images(1))
    assert mean.shape == (1, 4, 4, 4)


def test_load_prints_no_accelerate_hint(tiny_vae_dir, capfd):
    """Without `accelerate` diffusers would print an install hint at every load; load_vae loads the same
    way, quietly."""
    load_vae(tiny_vae_dir)
    out, err = capfd.readouterr()
    assert "accelerate" not in out + err
