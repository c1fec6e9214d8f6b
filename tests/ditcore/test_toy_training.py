"""A tiny DiT trained a few hundred steps on toy latents lowers its loss and samples onto the data support."""

import pytest
import torch

from ditcore.models import build_model
from ditcore.objectives import ObjectiveConfig, loss, validation_loss
from ditcore.samplers import make_generators, model_fn_from_model, noise_from_seeds, sample

SHAPE = (2, 4, 4)  # a small "latent": 2 channels, 4x4


def toy_data(n, generator, patterns):
    """Two classes, each a fixed pattern plus small isotropic noise (support = two small balls)."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    x0 = patterns[labels] + 0.05 * torch.randn(n, *SHAPE, generator=generator)
    return x0, labels


@pytest.mark.slow
def test_tiny_dit_learns_toy_latents(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    patterns = torch.sign(torch.randn(2, *SHAPE, generator=g))  # +-1 entries, far apart
    model = build_model("DiT-T/2", in_channels=2, input_size=4, num_classes=2, depth=2, hidden_size=64, num_heads=4)
    cfg = ObjectiveConfig(process="flow", prediction="velocity", t_sampler="logit-normal", cond_dropout=0.1)
    null = {"y": 2}
    val_x0, val_y = toy_data(128, torch.Generator().manual_seed(1), patterns)
    before = validation_loss(model, val_x0, {"y": val_y}, cfg, num_t=8, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for step in range(300):
        x0, y = toy_data(64, g, patterns)
        value = loss(model, x0, {"y": y}, g, cfg, null)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    model.eval()
    after = validation_loss(model, val_x0, {"y": val_y}, cfg, num_t=8, seed=0)
    assert after < 0.5 * before, (before, after)

    n = 32
    labels = torch.arange(n) % 2
    x = sample(
        model_fn_from_model(model),
        noise_from_seeds(range(n), SHAPE),
        process="flow",
        prediction="velocity",
        sampler="dpmpp-2m",
        steps=20,
        cond={"y": labels},
        uncond={"y": 2},
        guidance=2.0,
        generators=make_generators(range(n)),
    )
    dist = (x[:, None] - patterns[None]).flatten(2).pow(2).mean(-1).sqrt()  # [n, 2] RMS distance to each pattern
    nearest = dist.argmin(1)
    assert (nearest == labels).float().mean() >= 0.9  # right class
    assert dist.min(1).values.median() < 0.25  # on the support (pattern spacing is ~1.4 RMS)
