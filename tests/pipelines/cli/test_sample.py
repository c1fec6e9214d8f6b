"""`ditscale sample` on checkpoints saved by ditcore.checkpoint: pixel space directly, latents via the VAE."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditcore.checkpoint import save_checkpoint
from ditcore.models import build_model
from pipelines.cli import sample as cmd_sample


def _vae_record(vae_dir, **extra) -> dict:
    """The manifest's "vae" entry for the tiny VAE (downsample 4, 4 latent channels) with a scale and a shift."""
    return {
        "path": str(vae_dir),
        "scaling_factor": 0.5,
        "shift_factor": 0.1,
        "latent_channels": 4,
        "downsample": 4,
        **extra,
    }


def _save(tmp_path, *, in_channels, data, seed=0, name="ckpt"):
    torch.manual_seed(seed)
    model = build_model("DiT-T/2", in_channels=in_channels, num_classes=5, input_size=8)
    with torch.no_grad():  # a fresh DiT outputs zeros; perturb so the samples depend on seed and label
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    objective = {"process": "flow", "prediction": "velocity", "t_sampler": "logit-normal", "cond_dropout": 0.1}
    return save_checkpoint(
        tmp_path / name, model=model, ema=model, config={"objective": objective, "data": data}, state={"step": 0}
    )


def test_pixel_checkpoint_writes_grid(tmp_path, capsys):
    ckpt = _save(tmp_path, in_channels=3, data={"space": "pixel"})
    out = tmp_path / "grid.png"
    rc = cmd_sample.main(
        [
            "--checkpoint",
            str(ckpt),
            "--sampler",
            "dpmpp-2m",
            "--steps",
            "4",
            "--guidance",
            "4.0",
            "--seed",
            "0",
            "--label",
            "1",
            "--label",
            "3",
            "--num",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and "wrote" in capsys.readouterr().out
    img = np.asarray(Image.open(out))
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8 and img.std() > 0
    # cell i depends only on seed + i and its label: sampling 1 image reproduces the first cell
    out1 = tmp_path / "one.png"
    assert (
        cmd_sample.main(["--checkpoint", str(ckpt), "--steps", "4", "--label", "1", "--num", "1", "--out", str(out1)])
        == 0
    )
    np.testing.assert_array_equal(np.asarray(Image.open(out1)), img[:8, :8])


def test_stochastic_sampler_and_guidance_interval(tmp_path):
    ckpt = _save(tmp_path, in_channels=3, data={"space": "pixel"})
    out = tmp_path / "ddpm.png"
    assert (
        cmd_sample.main(
            [
                "--checkpoint",
                str(ckpt),
                "--sampler",
                "ddpm",
                "--steps",
                "5",
                "--num",
                "2",
                "--guidance-interval",
                "0.2",
                "0.8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(out)).shape == (8, 16, 3)


def test_latent_checkpoint_decodes_through_manifest_vae(tmp_path):
    """A latent checkpoint decodes with the VAE its data manifest names, with the checkpoint's scale and shift."""
    from pipelines.encoders.vae import decode_to_images, load_vae
    from pipelines.generation import GenerationPipeline, SamplerSettings
    from tests.pipelines._precompute_helpers import tiny_vae

    vae_dir = tiny_vae(tmp_path / "vae")
    manifest_dir = tmp_path / "latents"
    manifest_dir.mkdir()
    (manifest_dir / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "image_size": 32,
                "vae": _vae_record(vae_dir, latent_size=8),
            }
        )
    )
    ckpt = _save(
        tmp_path, in_channels=4, data={"manifest": str(manifest_dir), "scaling_factor": 0.5, "shift_factor": 0.1}
    )
    out = tmp_path / "latent.png"
    assert (
        cmd_sample.main(["--checkpoint", str(ckpt), "--steps", "3", "--num", "3", "--guidance", "1", "--out", str(out)])
        == 0
    )
    grid = np.asarray(Image.open(out))
    assert grid.shape == (64, 64, 3)  # 3 images of 32 px (8x8 latents, downsample 4) in a 2x2 grid
    pipe = GenerationPipeline.from_checkpoint(str(ckpt))
    z = pipe.latents(pipe.label_conditions([0, 1, 2])[0], [0, 1, 2], SamplerSettings(steps=3, guidance=1.0))
    expected = decode_to_images(load_vae(str(vae_dir)), z, 0.5, 0.1)
    np.testing.assert_array_equal(grid[:32, :32], expected[0])
    np.testing.assert_array_equal(grid[32:, :32], expected[2])


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    assert cmd_sample.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "missing" in capsys.readouterr().err
    ckpt = _save(tmp_path, in_channels=3, data={"space": "pixel"})
    assert cmd_sample.main(["--checkpoint", str(ckpt), "--label", "9", "--out", str(tmp_path / "x.png")]) == 2
    assert "--label 9" in capsys.readouterr().err
    assert cmd_sample.main(["--checkpoint", str(ckpt), "--prompt", "a cat", "--out", str(tmp_path / "x.png")]) == 2
    assert "--prompt given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cmd_sample.main(["--checkpoint", str(ckpt), "--sampler", "plms"])
    # Values the service refuses are refused here too, before any sampling (NaN guidance drew a black grid).
    for bad in (["--guidance", "nan"], ["--guidance", "-3"], ["--eta", "inf"], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            cmd_sample.main(["--checkpoint", str(ckpt), *bad])
        assert bad[0] in capsys.readouterr().err
    out = str(tmp_path / "y.png")
    for bad, words in (
        (["--seed", str(2**32 - 1), "--num", "2"], "the last seed is past"),
        (["--prompt", " "], "--prompt: empty"),
        (["--out", str(tmp_path)], "is a directory"),
        # it wrote its PNG over any file: the checkpoint's own weights among them
        (["--out", str(Path(ckpt) / "ema.safetensors")], "inside the checkpoint"),
        (["--out", str(tmp_path / "notes.txt")], "exists and is not a PNG"),
    ):
        (tmp_path / "notes.txt").write_text("keep me")
        assert cmd_sample.main(["--checkpoint", str(ckpt), "--out", out, *bad]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "y.png").exists() and (tmp_path / "notes.txt").read_text() == "keep me"


def test_text_checkpoint_with_real_vae_and_text_encoder(tmp_path):
    """--prompt end to end: MiniLM from the manifest, null text for guidance, decoding through a real tiny VAE."""
    from safetensors.numpy import save_file

    from pipelines.encoders.text import load_text_encoder
    from tests.pipelines._precompute_helpers import tiny_vae

    vae_dir = tiny_vae(tmp_path / "vae")
    encoder = load_text_encoder("minilm")
    null = {k: np.asarray(v) for k, v in encoder.encode([""]).items()}
    latents = tmp_path / "latents"
    latents.mkdir()
    save_file({k: v[0] for k, v in null.items()}, str(latents / "null_text.safetensors"))
    ident = encoder.identity()
    (latents / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "vae": _vae_record(vae_dir),
                "text": {**ident, "encoder": "minilm", "null": "null_text.safetensors"},
            }
        )
    )
    torch.manual_seed(0)
    model = build_model(
        "MMDiT-T",
        input_size=8,
        text_dim=int(ident["dim"]),
        pooled_dim=int(ident["pooled_dim"]),
        max_text_len=int(ident["max_length"]),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ckpt = save_checkpoint(
        tmp_path / "ckpt",
        model=model,
        ema=model,
        state={"step": 0},
        config={
            "objective": {"process": "flow", "prediction": "velocity"},
            "data": {"manifest": str(latents), "scaling_factor": 0.5, "shift_factor": 0.1},
        },
    )
    out = tmp_path / "text.png"
    prompt_args = ["--checkpoint", str(ckpt), "--steps", "3", "--guidance", "3.0", "--num", "2", "--prompt"]
    assert cmd_sample.main([*prompt_args, "a large red circle at the top left", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (32, 64, 3) and grid.std() > 0
    other = tmp_path / "other.png"
    assert cmd_sample.main([*prompt_args, "a small blue square", "--out", str(other)]) == 0
    assert not np.array_equal(np.asarray(Image.open(other)), grid)  # the prompt reaches the model
