"""One generation path: for the same checkpoint, condition, seed and sampler settings, the sampler service (HTTP),
`ditscale sample` and FID evaluation return bit-identical images, for a deterministic and a stochastic sampler."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from tests.jobs._train_helpers import make_eval_dataset, perturbed_model, save_model_checkpoint
from tests.serve._helpers import serve_checkpoint

pytestmark = pytest.mark.slow

SETTINGS = [("euler", 4, 1.0), ("ddpm", 5, 3.0)]  # (sampler, steps, guidance): deterministic, stochastic + CFG


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A latent class-conditional DiT over a tiny VAE, with a data set that names the VAE and a feature net."""
    root = tmp_path_factory.mktemp("parity")
    data, _ = make_eval_dataset(root, n=16, num_classes=10)
    # perturbed: images depend on seed and label
    model = perturbed_model("DiT-T/2", num_classes=10, input_size=8)
    data_cfg = {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.1}
    return save_model_checkpoint(root / "ckpt", model, data_cfg, state={"step": 1}), data


@pytest.fixture(scope="module")
def service(checkpoint):
    yield from serve_checkpoint(checkpoint[0], "parity")


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("sampler,steps,guidance", SETTINGS)
def test_serve_sample_and_evaluation_draw_the_same_image(checkpoint, service, tmp_path, sampler, steps, guidance):
    from jobs.evaluation.fid import FIDSettings, generate_features, sample_seed
    from pipelines.cli.sample import main as sample_main

    ckpt, data = checkpoint
    label, seed = 3, sample_seed(0, 3)  # evaluation sample 3 of eval seed 0 has seed 3 and (10 classes) label 3
    r = requests.post(
        f"{service}/v1/generate",
        timeout=120,
        json={"label": label, "seed": seed, "steps": steps, "sampler": sampler, "guidance": guidance},
    )
    assert r.status_code == 200, r.text
    served = _png(r.content)
    out = tmp_path / "sample.png"
    assert (
        sample_main(
            [
                "--checkpoint",
                ckpt,
                "--label",
                str(label),
                "--seed",
                str(seed),
                "--num",
                "1",
                "--sampler",
                sampler,
                "--steps",
                str(steps),
                "--guidance",
                str(guidance),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    sampled = np.asarray(Image.open(out).convert("RGB"))
    cond = {"y": np.arange(4, dtype=np.int64)}  # evaluation's conditions: label i for sample i
    evaluated = generate_features(
        ckpt,
        data,
        [0, 1, 2, 3],
        cond,
        FIDSettings(num_samples=4, sampler=sampler, steps=steps, guidance=guidance, seed=0),
        want_images=True,
    )["images"][3]
    assert served.shape == sampled.shape == evaluated.shape == (32, 32, 3)
    assert served.std() > 0  # a real image, not a constant
    np.testing.assert_array_equal(served, sampled)
    np.testing.assert_array_equal(served, evaluated)
    settings = json.loads(r.headers["X-Ditscale-Settings"])
    assert (settings["seed"], settings["sampler"], settings["steps"]) == (seed, sampler, steps)


def test_stochastic_stream_is_not_the_initial_noise(checkpoint):
    """The sampler's per-step noise comes from a stream derived from the seed, independent of x_T."""
    from pipelines.generation import initial_noise, sampler_seed

    x_t = initial_noise([7], (4, 8, 8))[0]
    first_step_noise = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(sampler_seed(7)))
    assert not torch.allclose(x_t, first_step_noise)
    assert sampler_seed(7) != 7 and sampler_seed(7) != sampler_seed(8)
