"""Pixel space (precompute `vae: null`): the rows hold the images themselves, a DiT trains on them and the
generation path returns images without any VAE."""

from __future__ import annotations

import numpy as np
import pytest

from ditcore.config import from_dict
from ditcore.data.builtin import BuiltinSpec, render_batch
from ditcore.preprocess import images_to_tensor
from pipelines.latents.reader import load_latents_numpy, read_manifest
from pipelines.precompute.job import PrecomputeConfig, run_precompute
from tests.jobs._train_helpers import budget_override, train_config
from tests.pipelines._precompute_helpers import tiny_feature_net

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

S = 32


def test_pixel_space_rows_training_and_generation(tmp_path):
    out = tmp_path / "pixels"
    cfg = {
        "output": str(out),
        "image_size": S,
        "progress": False,
        "source": {"kind": "builtin", "count": 12, "shard_size": 8},
        "vae": None,
        "text": None,
        "fid": {"feature_net": str(tiny_feature_net(tmp_path / "fn"))},
        "compute": {"batch_size": 8, "actors": 1},
    }
    summary = run_precompute(from_dict(PrecomputeConfig, cfg))
    assert (summary["written"], summary["failed"]) == (12, 0)
    m = read_manifest(str(out))
    assert (m.vae.path, m.vae.latent_channels, m.vae.downsample, m.vae.latent_size) == (None, 3, 1, S)
    assert (m.vae.scaling_factor, m.vae.shift_factor) == (1.0, 0.0)

    # The "latent" is the image in [-1, 1] (fp16), its flip the mirrored image, the posterior std 0.
    rows = load_latents_numpy(str(out))
    order = np.argsort(rows["id"])
    batch = render_batch(0, 12, BuiltinSpec(image_size=S))
    assert list(rows["id"][order]) == list(batch["id"])
    x = images_to_tensor(batch["image"]).numpy()
    assert np.abs(rows["latent_mean"][order].astype(np.float32) - x).max() < 1e-3
    assert np.abs(rows["latent_mean_flip"][order].astype(np.float32) - x[..., ::-1]).max() < 1e-3
    assert not rows["latent_std"].any()

    # A class-conditional DiT trains on the pixels (3 channels, S x S input) and samples images with no VAE.
    from jobs.train.driver import run_local
    from pipelines.generation import GenerationPipeline, SamplerSettings

    tcfg = train_config(str(out), tmp_path, preset="DiT-T/2", tracking=False)
    tcfg = train_config(str(out), tmp_path, budget_override(tcfg, 3), preset="DiT-T/2", tracking=False)
    res = run_local(tcfg, str(tmp_path / "run"))
    assert res["status"] == "finished", res
    pipe = GenerationPipeline.from_checkpoint(res["last_checkpoint"])
    assert pipe.pixel_space and pipe.vae is None and pipe.image_size == S
    images = pipe.generate_labels([0, 1], [0, 1], SamplerSettings(sampler="euler", steps=2))
    assert images.shape == (2, S, S, 3) and images.dtype == np.uint8
