"""Evaluation job: FID of a checkpoint through the data set's VAE / feature net / reference stats, sampled on Ray
actors (result independent of the actor split), caption-attribute accuracy on built-in text data, CLI errors."""

from __future__ import annotations

import math

import pytest
import torch

from jobs.cli.evaluate import main
from jobs.evaluation.fid import FIDSettings, evaluate_checkpoint, generate_features
from tests.jobs._train_helpers import TEXT_BUILTIN, make_eval_dataset, perturbed_model, save_model_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data, assets = make_eval_dataset(root, n=16, **TEXT_BUILTIN)
    # perturbed: samples depend on the weights
    model = perturbed_model("MMDiT-T", scale=0.02, text_dim=16, pooled_dim=16, max_text_len=8)
    ckpt = save_model_checkpoint(root / "ckpt" / "step_00000001", model, {"manifest": data}, state={"step": 1})
    return {"data": data, "ckpt": ckpt, "assets": assets}


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
        # More torch threads in this process (the idle CPUs a sweep's last trial borrows) give the same FID.
        threaded = evaluate_checkpoint(
            setup["ckpt"], setup["data"], num_samples=12, sampler="euler", steps=3, seed=1, num_actors=0, threads=2
        )
    finally:
        ray.shutdown()
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6, abs=1e-8)
    assert two["sampling_device"] == one["sampling_device"] == "cpu fp32" and two["sampling_gpus"] == 0
    assert two["attr_acc"] == pytest.approx(one["attr_acc"])
    assert here["fid"] == pytest.approx(one["fid"], rel=1e-6, abs=1e-8)
    assert threaded["fid"] == pytest.approx(one["fid"], rel=1e-4, abs=1e-6)
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


@pytest.mark.slow
def test_sampling_tasks_take_a_gpu_when_the_cluster_has_them(setup):
    """A cluster that lists GPUs (two logical GPUs here: Ray schedules by resource, torch still sees no CUDA): each
    sampling task holds one unless num_gpus=0; the FID is the same either way and equals the in-process one."""
    import ray

    kw = dict(num_samples=12, sampler="euler", steps=3, seed=1)
    here = evaluate_checkpoint(setup["ckpt"], setup["data"], num_actors=0, **kw)
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        on_gpus = evaluate_checkpoint(setup["ckpt"], setup["data"], num_actors=2, **kw)
        cpu_only = evaluate_checkpoint(setup["ckpt"], setup["data"], num_actors=2, num_gpus=0, **kw)
        wide = evaluate_checkpoint(setup["ckpt"], setup["data"], num_actors=1, num_gpus=0, cpus_per_actor=2, **kw)
    finally:
        ray.shutdown()
    assert on_gpus["sampling_gpus"] == 2 and cpu_only["sampling_gpus"] == 0 and here["sampling_gpus"] == 0
    # A task uses the CPUs it holds (it ran one thread whatever it held)
    assert (
        here["sampling_threads"] == 1
        and wide["sampling_threads"] == 2
        and wide["fid"] == pytest.approx(here["fid"], rel=1e-3)
    )
    assert on_gpus["sampling_device"] == "cpu fp32"  # no CUDA behind the logical GPUs
    assert on_gpus["fid"] == pytest.approx(here["fid"], rel=1e-6) and cpu_only["fid"] == pytest.approx(here["fid"])


def test_cli_errors(setup, capsys):
    assert main([setup["ckpt"], "--sampler", "nope", "--num-samples", "4"]) == 2
    assert "unknown 'nope'" in capsys.readouterr().err
    assert main([setup["ckpt"], "--num-samples", "1"]) == 2
    assert main(["/does/not/exist"]) == 2
    # Named by the parser, before anything loads: a negative count, and seeds outside 0..2**32-1 (a huge one
    # overflowed the derived sample seeds part-way through sampling, "Overflow when unpacking long long").
    for flag, value, words in (
        ("--num-actors", "-1", "argument --num-actors: must be >= 0, got -1"),
        ("--seed", "-5", "argument --seed: must be >= 0, got -5"),
        ("--seed", "99999999999999", "argument --seed: must be at most 4294967295, got 99999999999999"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([setup["ckpt"], flag, value, "--num-samples", "4"])
        assert exit_.value.code == 2 and words in capsys.readouterr().err
    # What the sampling tasks or the final scoring failed on (after starting Ray, or after all the sampling): named
    # first. (No Ray here: the test would be refused by conftest if one started.)
    many = ["--num-samples", "4", "--steps", "1", "--num-actors", "2"]
    assert main([setup["ckpt"], *many, "--sampler", "dpmsolver-v3"]) == 2
    assert "needs the model statistics" in (err := capsys.readouterr().err) and f"`ditscale ems {setup['ckpt']}" in err
    assert main([setup["ckpt"], *many, "--sampler", "ddpm-learned"]) == 2
    assert "needs a checkpoint trained with objective.learn_sigma=true" in capsys.readouterr().err
    assert main([setup["ckpt"], *many, "--classifier", setup["assets"]["feature_net"]]) == 2
    assert "is not an image classifier" in capsys.readouterr().err


def test_data_scores_with_its_own_feature_net(setup, tmp_path, capsys):
    """`--data X` compares with X's reference statistics, so the samples' features must come from X's network
    (they came from the checkpoint's data set, while the result named X's network)."""
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(setup["data"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["fid"]["feature_net"] = str(tmp_path / "no-such-net")
    manifest["source"] = {"kind": "folder"}  # no attribute accuracy: only the FID features use the net
    (other / "manifest.json").write_text(json.dumps(manifest))
    argv = [setup["ckpt"], "--data", str(other), "--num-samples", "4", "--steps", "2", "--num-actors", "0"]
    assert main(argv) == 2
    assert "no-such-net" in capsys.readouterr().err


def test_the_cache_key_names_how_the_fid_se_is_resampled(monkeypatch):
    # fid_se came from a bootstrap that overstated it where samples barely outnumber dimensions; a result cached
    # with it must not be read as a half-sampling one.
    from jobs.evaluation import fid

    s = FIDSettings(num_samples=320, sampler="euler", steps=12, guidance=2.0)
    now = s.key("net")
    monkeypatch.setattr(fid, "FID_SE_METHOD", "bootstrap")
    assert s.key("net") != now


def test_the_cache_key_names_gpu_sampling_and_keeps_cpu_keys():
    from jobs.evaluation.fid import sampling_compute

    s = FIDSettings(num_samples=320, sampler="euler", steps=12, guidance=2.0)
    # CPU fp32 is the default; bf16 GPU samples get their own
    assert s.key("net", compute="cpu") == s.key("net") != s.key("net", compute="cuda-bf16")
    assert sampling_compute(0) == ("cuda-bf16" if torch.cuda.is_available() else "cpu")  # in this process
    assert sampling_compute(4, num_gpus=1) == "cuda-bf16" and sampling_compute(4, num_gpus=0) == "cpu"


def test_a_checkpoint_that_cannot_be_scored_on_the_data_is_named_before_sampling(setup, tmp_path, capsys):
    import shutil

    # A text model against a class data set ended in a multi-line pyarrow error; a class model against a captioned
    # set returned a FID.
    classes, _ = make_eval_dataset(tmp_path / "cls", n=8, num_classes=4)
    assert main([setup["ckpt"], "--data", classes, "--num-samples", "4", "--num-actors", "0"]) == 2
    assert "a text-conditioned checkpoint, but" in capsys.readouterr().err
    # A truncated weights file is found before any sampling task loads it (with actors, each printed a traceback).
    bad = tmp_path / "bad" / "step_00000001"
    shutil.copytree(setup["ckpt"], bad)
    ema = bad / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    assert main([str(bad), "--num-samples", "4", "--num-actors", "2"]) == 2
    err = capsys.readouterr().err
    assert "ema.safetensors: size 100 bytes, expected" in err and "ray::" not in err


def test_too_few_samples_and_a_data_set_without_labels_are_named_before_sampling(setup):
    """2 samples passed the checks, then the FID's bootstrap failed after all the sampling (or after training);
    class accuracy on captioned data without labels failed with the reader's schema dump."""
    import numpy as np

    from jobs.evaluation.fid import _class_labels

    with pytest.raises(ValueError, match=r"num_samples must be >= 3 .* got 2"):
        FIDSettings(num_samples=2).check()
    FIDSettings(num_samples=3).check()
    with pytest.raises(ValueError, match="class accuracy needs a label column"):
        _class_labels(setup["data"], {"id": np.array(["0", "1"])}, 2)


def test_a_model_of_fewer_classes_or_another_text_encoder_than_the_data_is_refused(setup, tmp_path):
    """Label num_classes is the model's null class: an 11-class data set drew unconditional samples for class 10
    of a 10-class model (a skewed FID), larger labels failed deep in the embedding; captions of another encoder
    width ended in a shape error."""
    from jobs.evaluation.fid import check_model_fits_data
    from pipelines.latents.manifest import Manifest

    data, _ = make_eval_dataset(tmp_path / "cls", n=8, num_classes=4)
    m = Manifest.read(data)
    with pytest.raises(ValueError, match=f"knows 3 classes, but {data} has 4"):
        check_model_fits_data({"num_classes": 3}, "class", m, data)
    check_model_fits_data({"num_classes": 4}, "class", m, data)
    text = Manifest.read(setup["data"])
    assert text.text.dim
    check_model_fits_data({"text_dim": text.text.dim, "pooled_dim": text.text.pooled_dim}, "text", text, "d")
    with pytest.raises(ValueError, match=f"width 999 text embeddings, but d holds {text.text.dim}"):
        check_model_fits_data({"text_dim": 999}, "text", text, "d")
