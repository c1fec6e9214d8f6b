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

from tests.conftest import free_port
from tests.jobs._train_helpers import make_eval_assets, make_latent_dataset

pytestmark = pytest.mark.slow

SETTINGS = [("euler", 4, 1.0), ("ddpm", 5, 3.0)]  # (sampler, steps, guidance): deterministic, stochastic + CFG


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A latent class-conditional DiT over a tiny VAE, with a data set that names the VAE and a feature net."""
    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict

    root = tmp_path_factory.mktemp("parity")
    assets = make_eval_assets(root / "assets")
    data = make_latent_dataset(
        root / "lat",
        n=16,
        num_classes=10,
        vae_path=assets["vae_path"],
        feature_net=assets["feature_net"],
        fid_stats=assets["fid_stats"],
    )
    torch.manual_seed(0)
    model = build_model("DiT-T/2", num_classes=10, input_size=8)
    with torch.no_grad():  # a fresh adaLN-Zero model outputs zeros: perturb it so images depend on seed and label
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = {
        "model": config_to_dict(model.config),
        "objective": {"process": "flow", "prediction": "velocity"},
        "data": {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.1},
    }
    return str(save_checkpoint(root / "ckpt", model=model, ema=model, config=config, state={"step": 1})), data


@pytest.fixture(scope="module")
def service(checkpoint):
    import ray
    from ray import serve

    from serve.app import make_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            make_app(
                {"checkpoint": checkpoint[0]},
                {
                    "Sampler": {"ray_actor_options": {"num_cpus": 0.5}},
                    "Ingress": {"ray_actor_options": {"num_cpus": 0}, "user_config": {"auth_token_env": None}},
                },
            ),
            name="parity",
            route_prefix="/",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


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
    assert sampler_seed(7) != 7 and sampler_seed(7) == sampler_seed(7)
