"""diffusers export: exported DiT / MM-DiT match the ditcore models, DiTPipeline samples, refusals name the option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ditcore.checkpoint import save_checkpoint
from ditcore.models import build_model, resolve_config
from ditcore.objectives import ObjectiveConfig
from ditcore.processes import build_process
from pipelines.export import (
    EXPORT_META,
    ExportError,
    check_exportable,
    export_to_diffusers,
    load_exported,
    scheduler_for,
)
from tests.pipelines.encoders._tiny import tiny_autoencoder

TOL = 1e-5


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter: zero-initialised adaLN / output layers and biases become non-zero, norm gains != 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _checkpoint(
    root, name, preset, overrides=None, process="flow", prediction="velocity", shift=0.0, scale=0.5, **objective
):
    """A checkpoint directory with random raw weights and different random EMA weights; returns (dir, raw, ema).
    `objective`: more objective fields (preconditioning, t_sampler, ...)."""
    overrides = overrides or {}
    raw = _randomize(build_model(preset, **overrides), 0)
    ema = _randomize(build_model(preset, **overrides), 1)
    config = {
        "model": raw.config,
        "objective": {"process": process, "prediction": prediction, **objective},
        "data": {"manifest": "unused", "scaling_factor": scale, "shift_factor": shift},
    }
    path = save_checkpoint(root / name, model=raw, ema=ema, config=config, state={"step": 7})
    return path, raw, ema


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny random AutoencoderKL (downsample 2: 8x8 latents <-> 16x16 images) saved with save_pretrained."""
    vae = tiny_autoencoder((8, 8), norm_num_groups=4, sample_size=16, scaling_factor=0.18215, shift_factor=None)
    path = tmp_path_factory.mktemp("vae") / "tiny"
    vae.save_pretrained(str(path))
    return path


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# --------------------------------------------------------------------------------------------
# DiT -> DiTTransformer2DModel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [{}, {"learn_sigma": True, "mup": True, "num_classes": 10}], ids=["plain", "learn_sigma-mup-10classes"]
)
def test_dit_transformer_matches_ditcore(tmp_path, overrides):
    ckpt, _, ema = _checkpoint(tmp_path, "ck", "DiT-T/2", overrides)
    record = export_to_diffusers(ckpt, tmp_path / "out")
    assert record["source"]["weights"] == "ema.safetensors"
    assert record["diffusers_class"] == "DiTTransformer2DModel" and record["pipeline"] is None
    transformer = load_exported(tmp_path / "out")
    assert transformer.config.out_channels == ema.config.out_channels
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.rand(3, generator=g)
    null = ema.config.num_classes
    y = torch.tensor([0, 7, null])
    with torch.no_grad():
        expected = ema(x, t, y)
        # flow objective: diffusers timestep = 1000 * t; the null class is ditcore's id or DiTPipeline's 1000.
        got = transformer(x, timestep=1000.0 * t, class_labels=y).sample
        got_1000 = transformer(x, timestep=1000.0 * t, class_labels=torch.tensor([0, 7, 1000])).sample
    assert expected.abs().max() > 0.5  # not trivially zero
    assert _max_diff(got, expected) <= TOL
    assert _max_diff(got_1000, expected) <= TOL


def test_dit_vp_integer_timesteps_match_ditcore_time(tmp_path):
    ckpt, _, ema = _checkpoint(tmp_path, "ck", "DiT-T/2", process="vp-linear", prediction="eps")
    record = export_to_diffusers(ckpt, tmp_path / "out")
    assert record["timestep"]["timestep_scale"] == pytest.approx(1000 / 999)
    transformer = load_exported(tmp_path / "out")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 4, 8, 8, generator=g)
    idx = torch.tensor([0, 1, 500, 999])  # DPM-Solver / DDIM indices of the 1000-step schedule
    y = torch.tensor([1, 2, 3, 1000])
    with torch.no_grad():
        expected = ema(x, idx.double().div(999).float(), y)
        got = transformer(x, timestep=idx, class_labels=y).sample
    assert _max_diff(got, expected) <= TOL


def test_stock_dit_time_embedding_differs_without_alignment(tmp_path):
    from diffusers import DiTTransformer2DModel

    ckpt, _, ema = _checkpoint(tmp_path, "ck", "DiT-T/2")
    export_to_diffusers(ckpt, tmp_path / "out")
    stock = DiTTransformer2DModel.from_pretrained(
        str(tmp_path / "out"), subfolder="transformer", low_cpu_mem_usage=False
    )
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.3, 0.8])
    y = torch.tensor([1, 2])
    with torch.no_grad():
        diff = _max_diff(stock(x, timestep=1000.0 * t, class_labels=y).sample, ema(x, t, y))
    assert diff > 1e-3  # diffusers' 1/(half - 1) frequency spacing is a different embedding


def test_raw_weights_on_request(tmp_path):
    ckpt, raw, _ = _checkpoint(tmp_path, "ck", "DiT-T/2")
    record = export_to_diffusers(ckpt, tmp_path / "out", use_ema=False)
    assert record["source"]["weights"] == "model.safetensors"
    transformer = load_exported(tmp_path / "out")
    torch.testing.assert_close(transformer.proj_out_2.bias, raw.final_layer.linear.bias, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# DiTPipeline
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "process,prediction,overrides,prediction_type",
    [
        ("flow", "velocity", {}, "flow_prediction"),
        ("vp-linear", "eps", {"learn_sigma": True, "num_classes": 10}, "epsilon"),
        ("vp-cosine", "v", {}, "v_prediction"),
    ],
)
def test_dit_pipeline_generates_like_ditcore(tmp_path, vae_dir, process, prediction, overrides, prediction_type):
    from diffusers import DiTPipeline
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    ckpt, _, ema = _checkpoint(tmp_path, "ck", "DiT-T/2", overrides, process=process, prediction=prediction)
    record = export_to_diffusers(ckpt, tmp_path / "out", vae=vae_dir)
    assert record["pipeline"] == "DiTPipeline"
    assert (tmp_path / "out" / "model_index.json").is_file()
    pipe = load_exported(tmp_path / "out")
    assert isinstance(pipe, DiTPipeline)
    assert pipe.vae.config.scaling_factor == 0.5  # the checkpoint's data factor, not the VAE's own 0.18215
    assert pipe.scheduler.config.prediction_type == prediction_type

    def run() -> np.ndarray:
        g = torch.Generator().manual_seed(0)
        return pipe(
            class_labels=[1, 2], guidance_scale=4.0, num_inference_steps=3, generator=g, output_type="np"
        ).images

    images = run()
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    # Same pipeline driven by the ditcore model through the recorded conventions (time, null class).
    scale, null = record["timestep"]["timestep_scale"], ema.config.num_classes

    def ditcore_forward(hidden_states, timestep=None, class_labels=None, **_):
        t = (timestep.double() * scale / 1000.0).float()
        y = torch.where(class_labels >= null, null, class_labels)
        return Transformer2DModelOutput(sample=ema(hidden_states, t, y))

    pipe.transformer.forward = ditcore_forward
    assert float(np.abs(run() - images).max()) <= TOL


@pytest.mark.parametrize("process", ["vp-linear", "vp-cosine", "sit-gvp"])
def test_vp_scheduler_tables_match_process(process):
    sched = scheduler_for(ObjectiveConfig(process=process, prediction="eps"), "dit")
    t = torch.arange(999, dtype=torch.float64) / 999
    expected = build_process(process).alpha(t) ** 2
    np.testing.assert_allclose(sched.alphas_cumprod[:999].double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-7)


def test_flow_scheduler_for_dit_and_mmdit():
    dit = scheduler_for(ObjectiveConfig(process="flow", prediction="velocity"), "dit")
    assert type(dit).__name__ == "DPMSolverMultistepScheduler"
    assert dit.config.use_flow_sigmas and dit.config.prediction_type == "flow_prediction"
    mmdit = scheduler_for(ObjectiveConfig(process="sit-linear", prediction="velocity"), "mmdit")
    assert type(mmdit).__name__ == "FlowMatchEulerDiscreteScheduler"


@pytest.mark.parametrize(
    "objective,match",
    [
        ({"process": "vp-linear", "prediction": "velocity"}, "objective.prediction='velocity'"),
        ({"process": "flow", "prediction": "v"}, "objective.prediction='v'"),
        ({"process": "edm-ve", "prediction": "x0"}, "objective.process='edm-ve': a variance-exploding path"),
    ],
)
def test_pipeline_refuses_inexpressible_objective(tmp_path, vae_dir, objective, match):
    ckpt, _, _ = _checkpoint(tmp_path, "ck", "DiT-T/2", **objective)
    with pytest.raises(ExportError, match=match):
        export_to_diffusers(ckpt, tmp_path / "out", vae=vae_dir)
    assert not (tmp_path / "out").exists()
    # Without a VAE the transformer alone is still exported; the missing scheduler is recorded.
    record = export_to_diffusers(ckpt, tmp_path / "out")
    assert record["scheduler"] is None and any(match in w for w in record["warnings"])
    assert (tmp_path / "out" / "transformer").is_dir() and not (tmp_path / "out" / "scheduler").exists()


def test_an_edm_preconditioned_checkpoint_is_refused_with_or_without_a_vae(tmp_path):
    # Its weights are EDM's raw F: without c_skip / c_out / c_in / c_noise no diffusers model samples with them.
    ckpt, _, _ = _checkpoint(
        tmp_path, "ck", "DiT-T/2", process="edm-ve", prediction="x0", preconditioning="edm", t_sampler="log-normal"
    )
    with pytest.raises(ExportError, match="objective.preconditioning='edm': the weights are EDM's raw network F"):
        export_to_diffusers(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pipeline_refuses_shift_factor(tmp_path, vae_dir):
    ckpt, _, _ = _checkpoint(tmp_path, "ck", "DiT-T/2", shift=0.1)
    with pytest.raises(ExportError, match="data.shift_factor=0.1"):
        export_to_diffusers(ckpt, tmp_path / "out", vae=vae_dir)


def test_existing_output_needs_overwrite_and_only_an_export_is_replaced(tmp_path, monkeypatch, capsys):
    """--overwrite replaced any directory: one of other files, or the one holding the working directory."""
    ckpt, _, _ = _checkpoint(tmp_path, "ck", "DiT-T/2")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_to_diffusers(ckpt, tmp_path / "out")
    with pytest.raises(ValueError, match=r"other content \(not a diffusers export: no ditscale_export.json\)"):
        export_to_diffusers(ckpt, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    (tmp_path / "out" / "keep.txt").unlink()
    export_to_diffusers(ckpt, tmp_path / "out")  # an empty directory is written
    (tmp_path / "out" / "extra.txt").write_text("from the last export")
    export_to_diffusers(ckpt, tmp_path / "out", overwrite=True)  # an earlier export is replaced whole
    assert not (tmp_path / "out" / "extra.txt").exists()
    assert json.loads((tmp_path / "out" / EXPORT_META).read_text())["arch"] == "dit"
    (tmp_path / "out" / "work").mkdir()
    monkeypatch.chdir(tmp_path / "out" / "work")
    with pytest.raises(ValueError, match="is the working directory or holds it"):
        export_to_diffusers(ckpt, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "work").is_dir()
    # The command checks OUT before an s3:// checkpoint is downloaded (the download, or its error, came first).
    from pipelines.cli.export import main as export_main
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert export_main(["--diffusers", "s3://bucket/ck", str(tmp_path / "other"), "--overwrite"]) == 2
    assert "other content (not a diffusers export" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# MM-DiT -> SD3Transformer2DModel
# --------------------------------------------------------------------------------------------


def _text(batch: int, seed: int, length: int = 16):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 8, 8, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, length, 32, generator=g),
        torch.randn(batch, 32, generator=g),
    )


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": False, "mup": True}], ids=["qk_norm", "no-qk_norm-mup"])
def test_mmdit_transformer_matches_ditcore(tmp_path, vae_dir, overrides):
    from diffusers import SD3Transformer2DModel

    ckpt, _, ema = _checkpoint(tmp_path, "ck", "MMDiT-T", overrides, shift=0.1)
    record = export_to_diffusers(ckpt, tmp_path / "out", vae=vae_dir)
    assert record["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    vae_cfg = json.loads((tmp_path / "out" / "vae" / "config.json").read_text())
    assert (vae_cfg["scaling_factor"], vae_cfg["shift_factor"]) == (0.5, 0.1)  # SD3 decodes z / scale + shift
    transformer = load_exported(tmp_path / "out")
    assert isinstance(transformer, SD3Transformer2DModel)
    x, t, text, pooled = _text(2, 6)
    with torch.no_grad():
        expected = ema(x, t, text, None, pooled)
        got = transformer(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=1000.0 * t).sample
    assert expected.abs().max() > 0.5
    assert _max_diff(got, expected) <= TOL


def test_mmdit_padding_mask_equals_unpadded_prompt(tmp_path):
    ckpt, _, ema = _checkpoint(tmp_path, "ck", "MMDiT-T")
    export_to_diffusers(ckpt, tmp_path / "out")
    transformer = load_exported(tmp_path / "out")
    x, t, text, pooled = _text(2, 7)
    lengths = [5, 11]
    mask = torch.arange(16)[None, :] < torch.tensor(lengths)[:, None]  # [2, 16] True = real token
    padded = torch.where(mask[..., None], text, torch.full_like(text, 1e3))  # padding must not matter
    with torch.no_grad():
        expected = ema(x, t, padded, mask, pooled)
        for i, n in enumerate(lengths):
            # SD3Transformer2DModel has no text mask: the prompt is passed without its padding instead.
            got = transformer(
                x[i : i + 1],
                encoder_hidden_states=text[i : i + 1, :n],
                pooled_projections=pooled[i : i + 1],
                timestep=1000.0 * t[i : i + 1],
            ).sample
            assert _max_diff(got, expected[i : i + 1]) <= TOL
        unmasked = transformer(x, encoder_hidden_states=padded, pooled_projections=pooled, timestep=1000.0 * t).sample
    assert _max_diff(unmasked, expected) > 1e-3  # padding tokens are attended when they are passed


def test_flux_mmdit_is_refused_naming_the_options(tmp_path):
    ckpt, _, _ = _checkpoint(tmp_path, "ck", "MMDiT-T-flux")
    with pytest.raises(ExportError) as err:
        export_to_diffusers(ckpt, tmp_path / "out")
    assert "MMDiTConfig.num_single_blocks=2" in str(err.value)
    assert "MMDiTConfig.pos_embed='rope'" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "preset,overrides,option",
    [
        ("DiT-T/2", {"qk_norm": True}, "DiTConfig.qk_norm=True"),
        ("DiT-T/2", {"pos_embed": "rope"}, "DiTConfig.pos_embed='rope'"),
        ("DiT-T/2", {"mlp_ratio": 2.0}, "DiTConfig.mlp_ratio=2.0"),
        ("MMDiT-T", {"mlp_ratio": 3.0}, "MMDiTConfig.mlp_ratio=3.0"),
        # Exported without a word before: a student's guidance embedder dropped, depth-muP's branch scale lost.
        ("DiT-T/2", {"guidance_embed": True}, "DiTConfig.guidance_embed=True"),
        ("MMDiT-T", {"guidance_embed": True}, "MMDiTConfig.guidance_embed=True"),
        ("DiT-T/2", {"mup": True, "mup_depth": True}, "DiTConfig.mup_depth=True"),
    ],
)
def test_inexpressible_options_are_named(preset, overrides, option):
    with pytest.raises(ExportError, match=option.replace("(", r"\(").replace(".", r"\.")):
        check_exportable(resolve_config(preset, **overrides))


def test_cli_refuses_an_output_over_the_checkpoint_or_on_s3_and_exports_without_a_vae(tmp_path, capsys):
    """`--overwrite` into the checkpoint (or its run folder) would delete it; an s3:// OUT would become a local
    folder named 's3:'. Both are refused before anything is written. `--no-vae` exports the transformer alone."""
    from pipelines.cli.export import main

    ckpt, _, _ = _checkpoint(tmp_path, "ck", "DiT-T/2", shift=0.1)  # shift: no DiTPipeline possible
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for out in (ckpt, tmp_path / "ck", str(tmp_path / "ck" / "sub")):
        assert main(["--diffusers", str(ckpt), str(out), "--overwrite"]) == 2
        assert "overlaps the checkpoint" in capsys.readouterr().err
    assert main(["--diffusers", str(ckpt), "s3://bucket/exp"]) == 2
    assert "must be a local directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and not (tmp_path / "s3:").exists()
    assert main(["--diffusers", str(ckpt), str(tmp_path / "out"), "--no-vae"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / EXPORT_META).read_text())
    assert record["pipeline"] is None and record["vae"] is None and (tmp_path / "out" / "transformer").is_dir()


def test_an_s3_checkpoint_is_recorded_by_its_uri_not_the_temporary_copy(tmp_path, s3_bucket, capsys):
    from pipelines.cli.export import main
    from pipelines.infra import storage

    ckpt, _, _ = _checkpoint(tmp_path, "ck", "DiT-T/2", shift=0.1)
    uri = f"{s3_bucket}/runs/r1/checkpoints/{Path(ckpt).name}"
    storage.upload_dir(str(ckpt), uri)
    assert main(["--diffusers", uri, str(tmp_path / "out"), "--no-vae"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / EXPORT_META).read_text())
    assert record["source"]["checkpoint"] == uri  # not the ditscale-export-* copy deleted on exit
    # A local checkpoint is recorded by its resolved path.
    assert main(["--diffusers", str(ckpt), str(tmp_path / "out2"), "--no-vae"]) == 0
    assert json.loads((tmp_path / "out2" / EXPORT_META).read_text())["source"]["checkpoint"] == str(
        Path(ckpt).resolve()
    )


def test_a_manifest_vae_that_cannot_be_bundled_is_named_not_dropped(tmp_path, capsys):
    """Without --vae the manifest's VAE is bundled; one whose folder is gone (or a hub id) was dropped without a
    word: the export exited 0 with no DiTPipeline."""
    from pipelines.cli.export import main
    from tests.jobs._train_helpers import make_latent_dataset

    data = make_latent_dataset(tmp_path / "lat", n=4, num_classes=4, vae_path=str(tmp_path / "gone-vae"))
    raw = _randomize(build_model("DiT-T/2"), 0)
    config = {
        "model": raw.config,
        "objective": {"process": "flow", "prediction": "velocity"},
        "data": {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.0},
    }
    ckpt = save_checkpoint(tmp_path / "ck", model=raw, ema=raw, config=config, state={"step": 1})
    assert main(["--diffusers", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"the data manifest's VAE {str(tmp_path / 'gone-vae')!r} is not a local or s3:// directory" in err, err
    assert "--no-vae" in err and not (tmp_path / "out").exists()
