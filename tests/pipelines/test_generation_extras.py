"""The generation pipeline with a guidance-distilled checkpoint (one model call per step), DPM-Solver-v3 statistics
stored beside a checkpoint (`ditscale ems`), and concept steering (`ditscale concepts`, steer=...)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ditcore.guidance_distill import load_teacher_weights, student_model_config
from ditcore.models import build_model, config_from_dict, config_to_dict
from pipelines.generation import GenerationError, GenerationPipeline, SamplerSettings
from tests.jobs._train_helpers import make_eval_dataset, make_latent_dataset, perturbed_model, save_model_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A class-conditional DiT teacher and a distilled student (guidance embedder trained away from zero)."""
    root = tmp_path_factory.mktemp("gen_extras")
    data, _ = make_eval_dataset(root, fid=False, n=32, num_classes=4)
    teacher = perturbed_model("DiT-T/2", num_classes=4, input_size=8)
    student = build_model(config_from_dict(student_model_config(config_to_dict(teacher.config))))
    load_teacher_weights(student, teacher.state_dict())
    with torch.no_grad():
        student.g_embedder.mlp[2].weight.normal_(std=0.05)
    out = {}
    data_cfg = {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.0}
    for name, model in (("teacher", teacher), ("student", student)):
        out[name] = save_model_checkpoint(root / name, model, data_cfg, state={"step": 1})
    return out


def _calls(pipe: GenerationPipeline) -> list[int]:
    batches: list[int] = []
    pipe.model.register_forward_pre_hook(lambda _m, args: batches.append(int(args[0].shape[0])))
    return batches


def test_distilled_checkpoint_makes_one_model_call_per_step(ckpts):
    labels, seeds = [0, 1, 2], [5, 6, 7]
    teacher = GenerationPipeline.from_checkpoint(ckpts["teacher"], device="cpu")
    student = GenerationPipeline.from_checkpoint(ckpts["student"], device="cpu")
    assert student.distilled and not teacher.distilled
    t_calls, s_calls = _calls(teacher), _calls(student)
    guided = SamplerSettings(sampler="euler", steps=5, guidance=3.0)
    teacher.generate_labels(labels, seeds, guided)
    img_w3 = student.generate_labels(labels, seeds, guided)
    assert t_calls == [6] * 5  # CFG: conditional and unconditional halves in each call
    assert s_calls == [3] * 5  # guidance is an input: one forward of the batch per step
    img_w1 = student.generate_labels(labels, seeds, SamplerSettings(sampler="euler", steps=5, guidance=1.0))
    assert not np.array_equal(img_w3, img_w1)  # w reaches the model
    # It has no unguided half to switch to outside an interval: the interval was silently ignored.
    interval = SamplerSettings(sampler="euler", steps=5, guidance=3.0, guidance_interval=(0.2, 0.8))
    with pytest.raises(GenerationError, match=r"guidance_interval: \[0.2, 0.8\] cannot apply to a guidance-distilled"):
        student.generate_labels(labels, seeds, interval)


def test_dpmsolver_v3_needs_stored_ems_and_uses_them(ckpts, capsys):
    from jobs.cli.ems import main

    ckpt = ckpts["teacher"]
    pipe = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    v3 = SamplerSettings(sampler="dpmsolver-v3", steps=4, guidance=1.0)
    with pytest.raises(GenerationError, match=r"ditscale ems .* --guidance 1"):
        pipe.generate_labels([0], [0], v3)
    args = [ckpt, "--num-samples", "16", "--batch-size", "8", "--num-nodes", "12", "--num-tasks", "0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(args) == 0
        assert torch.get_num_threads() == 2  # in this process: its cores, not one (the Ray task's setting)
    finally:
        torch.set_num_threads(threads)
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["nodes"] == 12 and out["shape"] == [4, 8, 8]
    assert "[ditscale ems] batch 2/2 over 12 nodes" in cap.err  # progress on stderr, the result alone on stdout
    img = pipe.generate_labels([0, 1], [0, 1], v3)
    assert img.shape == (2, 32, 32, 3)
    with pytest.raises(GenerationError, match="ems_w2.safetensors"):  # EMS are per guidance scale
        pipe.generate_labels([0], [0], SamplerSettings(sampler="dpmsolver-v3", steps=4, guidance=2.0))
    assert main([ckpt, "--num-nodes", "3"]) == 2  # bad value: a clear error, nothing written
    # Guidances that read the same statistics file share one loaded copy: a server keeps one per file, not one per
    # distinct float a client sends.
    assert main([*args, "--guidance", "2"]) == 0
    capsys.readouterr()
    first = pipe._ems(2.0)
    assert all(pipe._ems(2.0 + k * 1e-12) is first for k in range(1, 4))
    assert sorted(pipe.__dict__["_ems_cache"]) == ["ems.safetensors", "ems_w2.safetensors"]
    # 1.0000001 reads as 1 to 6 digits: the w = 1 file `ditscale ems --guidance 1` wrote (it asked for
    # ems_w1.safetensors, which that command never writes, so its own hint could not be followed).
    assert pipe._ems(1.0000001) is pipe._ems(1.0)


def test_concepts_are_stored_and_steer_generation(ckpts, tmp_path, capsys):
    from jobs.cli.concepts import main

    ckpt = ckpts["teacher"]
    pipe = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(GenerationError, match="no concept directions"):
        pipe.generate_labels([0], [0], SamplerSettings(steer={"concept": "0", "alpha": 1.0}))
    # A steering strength out of range is named before any extraction (it came after, with the directions written).
    assert main([ckpt, "--num-samples", "32", "--response", "red", "--alphas", "0,25", "--out", str(tmp_path)]) == 2
    assert "--alphas '0,25': [25.0] outside [-20, 20]" in capsys.readouterr().err
    assert not (tmp_path / "concepts_pca.png").exists()
    assert main([ckpt, "--num-samples", "32", "--times", "0.5", "--out", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert "[ditscale concepts] features at t=0.5 (1/1): 32 rows" in cap.err
    # The pipeline that found none before (a running service) finds them now: "none" was cached for good.
    assert pipe.concepts() is not None
    assert (tmp_path / "concepts_pca.png").stat().st_size > 0
    assert out["layer"] == 0 and set(out["norm"]) == {"0", "1", "2", "3"}
    pipe = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    base = dict(sampler="euler", steps=4)
    plain = pipe.generate_labels([0, 1], [3, 4], SamplerSettings(**base))
    zero = pipe.generate_labels([0, 1], [3, 4], SamplerSettings(**base, steer={"concept": "2", "alpha": 0.0}))
    steered = pipe.generate_labels([0, 1], [3, 4], SamplerSettings(**base, steer={"concept": "2", "alpha": 3.0}))
    assert np.array_equal(plain, zero)
    assert not np.array_equal(plain, steered)
    assert np.array_equal(plain, pipe.generate_labels([0, 1], [3, 4], SamplerSettings(**base)))  # hook removed
    for steer, match in [
        ({"concept": "purple", "alpha": 1.0}, "unknown concept 'purple'"),
        ({"concept": "2", "alpha": 25.0}, r"steer.alpha: 25.0 is outside"),
        ({"concept": "2", "alpha": 1.0, "layer": 9}, "steer.layer: 9 is out of range"),
        ({"concept": "2"}, "steer must be"),
    ]:
        with pytest.raises(GenerationError, match=match):
            pipe.generate_labels([0], [0], SamplerSettings(**base, steer=steer))


def test_a_compiled_pipeline_steers_after_serving_unsteered_requests(ckpts, tmp_path, monkeypatch):
    """Serving's compile=true: dynamo does not guard on nn.Module hooks, so once the model was traced for an
    unsteered request the steering hook never ran and steered requests came back unsteered (HTTP 200)."""
    import functools

    from jobs.cli.concepts import main

    ckpt = ckpts["teacher"]
    if GenerationPipeline.from_checkpoint(ckpt, device="cpu").concepts() is None:
        assert main([ckpt, "--num-samples", "32", "--times", "0.5", "--out", str(tmp_path)]) == 0
    # dynamo's tracing is what skips the hooks; the eager backend keeps the test free of a C compiler
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    base = dict(sampler="euler", steps=4)
    steer = SamplerSettings(**base, steer={"concept": "2", "alpha": 3.0})
    eager = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    compiled = GenerationPipeline.from_checkpoint(ckpt, device="cpu", compile=True)
    plain = compiled.generate_labels([0, 1], [3, 4], SamplerSettings(**base))  # traced unsteered first
    steered = compiled.generate_labels([0, 1], [3, 4], steer)
    assert not np.array_equal(plain, steered)
    assert np.array_equal(steered, eager.generate_labels([0, 1], [3, 4], steer))


def test_concept_features_come_through_the_denoiser_the_network_was_trained_behind(tmp_path):
    """With EDM preconditioning the network sees c_in * x and c_noise(sigma), in training and sampling; the concept
    features were taken from the raw x_t and t (inputs of std up to ~56 it never saw)."""
    from ditcore.steering import capture_features
    from jobs.concepts.extract import ConceptSettings, extract_features

    data, _ = make_eval_dataset(tmp_path, fid=False, n=8, num_classes=4)
    model = perturbed_model("DiT-T/2", num_classes=4, input_size=8)
    edm = {"process": "edm-ve", "prediction": "x0", "preconditioning": "edm"}
    ckpt = save_model_checkpoint(
        tmp_path / "edm", model, {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.0}, objective=edm
    )
    pipe = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    settings = ConceptSettings(num_samples=4, batch_size=4, times=(0.5,), layer=0)
    feats, _, layer, (t,) = extract_features(pipe, settings)
    # The same first batch by hand, through the pipeline's denoiser.
    from ditcore.processes import build_process
    from pipelines.latents.reader import load_latents_numpy

    rows = load_latents_numpy(data, limit=4)
    x0 = (torch.from_numpy(rows["latent_mean"][:4].astype(np.float32)) - 0.0) * 0.5
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(settings.seed))
    a, s = (float(v) for v in build_process(pipe.objective.process).coefficients(t)[:2])
    with torch.no_grad(), capture_features(pipe.model, layer) as captured:
        pipe.model_fn(a * x0 + s * eps, torch.full((4,), t), y=torch.from_numpy(rows["label"][:4].astype(np.int64)))
    torch.testing.assert_close(feats[: captured[0].shape[0]], captured[0].cpu())


def test_sample_draws_more_images_than_classes_without_labels(ckpts, tmp_path):
    """`ditscale sample --num 6` on a 4-class model failed with "--label 4 out of range", a flag not given."""
    from PIL import Image

    from pipelines.cli.sample import main as sample_main

    out = tmp_path / "grid.png"
    args = ["--checkpoint", ckpts["teacher"], "--num", "6", "--sampler", "euler", "--steps", "2", "--out", str(out)]
    assert sample_main(args) == 0
    assert Image.open(out).size[0] > 0


def test_concepts_of_a_pixel_space_checkpoint(tmp_path):
    """A model trained on images themselves (no VAE): extraction read the VAE's scale factors, which a pixel-space
    pipeline never sets (AttributeError)."""
    from jobs.concepts.extract import ConceptSettings, extract_features

    data = make_latent_dataset(tmp_path / "px", n=8, channels=3, size=8, num_classes=4)
    mpath = tmp_path / "px" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["image_size"] = 8
    manifest["vae"].update(path=None, downsample=1, latent_channels=3, latent_size=8, scaling_factor=1.0)
    manifest["vae"]["shift_factor"] = 0.0
    mpath.write_text(json.dumps(manifest))
    model = perturbed_model("DiT-T/2", num_classes=4, input_size=8, in_channels=3)
    ckpt = save_model_checkpoint(tmp_path / "ck", model, {"manifest": data}, state={"step": 1})
    pipe = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    feats, labels, _, _ = extract_features(pipe, ConceptSettings(num_samples=4, batch_size=4, times=(0.5,)))
    assert feats.shape[0] == len(labels) == 4 and torch.isfinite(feats).all()


def test_ems_names_a_model_that_does_not_fit_its_data_before_starting_ray(tmp_path, capsys):
    """A class model whose data set holds captions failed inside the Ray tasks, with a pyarrow schema dump."""
    from jobs.cli.ems import main

    text_data, _ = make_eval_dataset(tmp_path, fid=False, n=8, num_classes=None, text=(8, 16, 16))
    model = perturbed_model("DiT-T/2", num_classes=4, input_size=8)
    ckpt = save_model_checkpoint(tmp_path / "ck", model, {"manifest": text_data}, state={"step": 1})
    assert main([ckpt, "--num-samples", "4", "--num-nodes", "8", "--num-tasks", "2"]) == 2
    assert "a class-conditional checkpoint, but" in capsys.readouterr().err  # and no Ray (conftest checks)


def test_stored_statistics_and_directions_that_do_not_fit_the_model_are_named(ckpts, tmp_path):
    # A damaged file, or one written for another model, was a bare parser or tensor-shape error mid-sampling. It is
    # the deployment's fault, not the request's: a StoredFileError (HTTP 500, logged; the CLIs name it, exit 2).
    import shutil

    from pipelines.checkpoint_extras import StoredFileError, _write, ems_name, save_concepts

    ckpt = tmp_path / "ck"
    shutil.copytree(ckpts["teacher"], ckpt)
    pipe = GenerationPipeline.from_checkpoint(str(ckpt), device="cpu")  # latents [4, 8, 8], width 64, 2 blocks
    (ckpt / ems_name(3.0)).write_bytes(b"not a safetensors file")
    with pytest.raises(StoredFileError, match=r"ems_w3.safetensors: not a readable DPM-Solver-v3 statistics file"):
        pipe.check_sampler("dpmsolver-v3", 3.0)
    lam = torch.linspace(-3, 3, 8, dtype=torch.float64)
    other = {"lambdas": lam, **{k: torch.zeros(8, 3, 2, 2) for k in ("l", "s", "b")}}
    _write(str(ckpt / ems_name(5.0)), other, {})
    with pytest.raises(StoredFileError, match=r"statistics of shape \[3, 2, 2\] do not fit this model's samples"):
        pipe.check_sampler("dpmsolver-v3", 5.0)
    _write(str(ckpt / ems_name(6.0)), {"lambdas": lam}, {})
    with pytest.raises(StoredFileError, match=r"ems_w6.safetensors: damaged DPM-Solver-v3 statistics"):
        pipe.check_sampler("dpmsolver-v3", 6.0)
    steer = SamplerSettings(sampler="euler", steps=2, steer={"concept": "a", "alpha": 1.0})
    save_concepts(str(ckpt), {"a": torch.ones(64)}, layer=7, info={})
    with pytest.raises(StoredFileError, match=r"its layer 7 is out of range \[0, 2\) for this model"):
        GenerationPipeline.from_checkpoint(str(ckpt), device="cpu").generate_labels([0], [0], steer)
    save_concepts(str(ckpt), {"a": torch.ones(65)}, layer=0, info={})
    with pytest.raises(StoredFileError, match=r"concept 'a' has shape \[65\], this model's width is 64"):
        GenerationPipeline.from_checkpoint(str(ckpt), device="cpu").generate_labels([0], [0], steer)
