"""The generation pipeline's dtype option (serving and evaluation on GPUs use bf16 autocast): checked on the CPU,
where bf16 autocast also runs. bf16 images stay close to fp32 ones for the same seeds; bad values are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditcore.checkpoint import save_checkpoint
from ditcore.models import build_model, config_to_dict, resolve_config


@pytest.fixture(scope="module")
def pixel_ckpt(tmp_path_factory) -> str:
    cfg = resolve_config("DiT-T/2", in_channels=3)
    torch.manual_seed(0)
    model = build_model(cfg)
    for p in model.parameters():  # adaLN-Zero outputs zeros; perturb so the images depend on the weights
        p.data.add_(0.05 * torch.randn_like(p))
    path = save_checkpoint(
        tmp_path_factory.mktemp("ck") / "step_00000001",
        model=model,
        config={"model": config_to_dict(cfg), "objective": {}, "data": {"space": "pixel"}},
        state={"step": 1},
    )
    return str(path)


def test_bf16_images_stay_close_to_fp32(pixel_ckpt):
    from pipelines.generation import GenerationPipeline, SamplerSettings

    s = SamplerSettings(sampler="euler", steps=6, guidance=1.5)
    cond = {"y": torch.arange(6) % 10}
    auto = GenerationPipeline.from_checkpoint(pixel_ckpt, device="cpu")
    assert not auto.bf16  # auto is fp32 on a CPU
    fp32 = auto.generate(cond, range(6), s)
    bf16_pipe = GenerationPipeline.from_checkpoint(pixel_ckpt, device="cpu", dtype="bf16")
    bf16 = bf16_pipe.generate(cond, range(6), s)
    assert bf16.dtype == np.uint8 and bf16.shape == fp32.shape
    diff = np.abs(bf16.astype(np.int32) - fp32.astype(np.int32))
    assert diff.max() > 0  # the option really changes the arithmetic
    assert diff.mean() < 3.0  # ... but not the images (uint8 levels)


def test_bad_dtype_is_named(pixel_ckpt):
    from pipelines.generation import GenerationError, GenerationPipeline

    with pytest.raises(GenerationError, match="dtype must be 'auto', 'fp32' or 'bf16', got 'fp16'"):
        GenerationPipeline.from_checkpoint(pixel_ckpt, device="cpu", dtype="fp16")


def test_app_args_dtype_defaults_to_auto_and_refuses_fp16():
    from pydantic import ValidationError

    from serve.app_args import AppArgs

    assert AppArgs(checkpoint="/x").dtype == "auto"
    with pytest.raises(ValidationError, match="dtype"):
        AppArgs(checkpoint="/x", dtype="fp16")
