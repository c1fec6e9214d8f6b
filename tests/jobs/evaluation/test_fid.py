"""Evaluation job: FID of a checkpoint through the data set's VAE / feature net / reference stats, sampled on Ray
actors (result independent of the actor split), caption-attribute accuracy on built-in text data, CLI errors."""

from __future__ import annotations

import math

import pytest
import torch

from ditcore.checkpoint import save_checkpoint
from ditcore.models import build_model, config_to_dict
from jobs.cli.evaluate import main
from jobs.evaluation.fid import FIDSettings, evaluate_checkpoint, generate_features
from tests.jobs._train_helpers import make_eval_assets, make_latent_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    assets = make_eval_assets(root / "assets")
    data = make_latent_dataset(
        root / "lat",
        n=16,
        num_classes=None,
        text=(8, 16, 16),
        builtin=True,
        vae_path=assets["vae_path"],
        feature_net=assets["feature_net"],
        fid_stats=assets["fid_stats"],
    )
    torch.manual_seed(0)
    model = build_model("MMDiT-T", text_dim=16, pooled_dim=16, max_text_len=8)
    for p in model.parameters():  # a fresh model outputs zeros; perturb it so samples depend on the weights
        p.data.add_(0.02 * torch.randn_like(p))
    ckpt = save_checkpoint(
        root / "ckpt" / "step_00000001",
        model=model,
        ema=model,
        config={
            "model": config_to_dict(model.config),
            "objective": {"process": "flow", "prediction": "velocity"},
            "data": {"manifest": data},
        },
        state={"step": 1},
    )
    return {"data": data, "ckpt": str(ckpt), "assets": assets}


@pytest.mark.slow
def test_fid_and_attribute_accuracy_independent_of_actor_split(setup):
    import ray

    one = evaluate_checkpoint(
        setup["ckpt"], setup["data"], num_samples=12, sampler="euler", steps=3, seed=1, num_actors=1
    )
    assert math.isfinite(one["fid"]) and one["fid"] >= 0
    assert 0.0 <= one["attr_acc"] <= 1.0
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        two = evaluate_checkpoint(
            setup["ckpt"], setup["data"], num_samples=12, sampler="euler", steps=3, seed=1, num_actors=2
        )
        # num_actors=0 samples in this process even with Ray running (no actor start-up) and agrees too.
        here = evaluate_checkpoint(
            setup["ckpt"], setup["data"], num_samples=12, sampler="euler", steps=3, seed=1, num_actors=0
        )
    finally:
        ray.shutdown()
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6, abs=1e-8)
    assert two["attr_acc"] == pytest.approx(one["attr_acc"])
    assert here["fid"] == pytest.approx(one["fid"], rel=1e-6, abs=1e-8)
    # FID is the Fréchet distance of the sample features against the manifest's reference stats.
    from ditcore.metrics.fid import feature_stats, frechet_distance_sqrtm
    from jobs.evaluation.fid import conditions
    from pipelines.latents.reader import read_manifest

    cond = conditions(setup["data"], read_manifest(setup["data"]), "text", 12, 0)
    feats = generate_features(
        setup["ckpt"],
        setup["data"],
        list(range(12)),
        cond,
        FIDSettings(num_samples=12, sampler="euler", steps=3, guidance=1.0, seed=1),
    )["features"]
    mu, sigma = feature_stats(feats)
    ref_mu, ref_sigma = setup["assets"]["fid_stats"]
    assert one["fid"] == pytest.approx(frechet_distance_sqrtm(mu, sigma, ref_mu, ref_sigma), rel=1e-5)
    other_seed = evaluate_checkpoint(setup["ckpt"], setup["data"], num_samples=12, sampler="euler", steps=3, seed=2)
    assert other_seed["fid"] != one["fid"]


def test_cli_errors(setup, capsys):
    assert main([setup["ckpt"], "--sampler", "nope", "--num-samples", "4"]) == 2
    assert "unknown 'nope'" in capsys.readouterr().err
    assert main([setup["ckpt"], "--num-samples", "1"]) == 2
    assert main(["/does/not/exist"]) == 2
    assert main([setup["ckpt"], "--num-actors", "-1", "--num-samples", "4"]) == 2
    assert "num_actors must be >= 0" in capsys.readouterr().err
