"""promote logs the champion as an MLflow pyfunc model (sqlite store): `mlflow.pyfunc.load_model("models:/..")`
loads it after the data set and VAE it was trained on are gone, and its images equal the generation pipeline's for
the same label, seed and settings; a grid of the champion's samples is readable back through the MLflow client."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jobs.cli import promote as promote_job
from pipelines.infra.tracking import PARENT_TAG, POINTS_ARTIFACT, ROLE_SWEEP, ROLE_TAG, ROLE_TRIAL, ensure_experiment
from pipelines.infra.tracking import client as get_client
from tests.jobs._train_helpers import make_eval_dataset, perturbed_model, save_model_checkpoint


@pytest.fixture
def champion(tmp_path, monkeypatch):
    """A sqlite MLflow store with one sweep whose best point is a real latent class-conditional DiT checkpoint."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # A manifest without FID statistics (it names the VAE only).
    data, _ = make_eval_dataset(tmp_path, fid=False, n=16, num_classes=10)
    model = perturbed_model("DiT-T/2", num_classes=10, input_size=8)  # perturbed: images depend on seed and label
    ckpt = save_model_checkpoint(
        tmp_path / "run" / "step_00000100",
        model,
        {"manifest": data, "scaling_factor": 0.5, "shift_factor": 0.1},
        train={"eval": {"sampler": "euler", "steps": 3, "guidance": 1.0, "seed": 7}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = get_client(uri)
    exp_id = ensure_experiment(client, "grid")
    parent = client.create_run(exp_id, run_name="sweep", tags={ROLE_TAG: ROLE_SWEEP})
    child = client.create_run(exp_id, run_name="t", tags={ROLE_TAG: ROLE_TRIAL, PARENT_TAG: parent.info.run_id})
    points = [
        {
            "model": "DiT-T/2",
            "params": 1e6,
            "budget_flops": 1e12,
            "flops": 1e12,
            "step": 100,
            "fid": 9.0,
            "checkpoint": ckpt,
        }
    ]
    client.log_text(child.info.run_id, json.dumps(points), POINTS_ARTIFACT)
    client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    return {"uri": uri, "client": client, "ckpt": ckpt, "run_id": child.info.run_id, "tmp": tmp_path}


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_champion_pyfunc_loads_and_predicts(champion, capsys):
    import mlflow

    from pipelines.generation import GenerationPipeline, SamplerSettings
    from pipelines.infra.tracking import resolve_champion

    uri, client = champion["uri"], champion["client"]
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", uri]) == 0, capsys.readouterr().err
    assert "mlflow.pyfunc.load_model('models:/ditscale@champion')" in capsys.readouterr().out
    # Ray Serve's source of truth is unchanged: the alias still resolves to the raw checkpoint directory
    champ = resolve_champion("ditscale", tracking_uri=uri)
    assert champ["checkpoint"] == champion["ckpt"] and champ["tags"]["ditscale.format"] == "pyfunc"
    # the logged model sits in the sweep's experiment, linked to the champion's trial run
    logged = client.get_logged_model(champ["source"].rsplit("/", 1)[-1])
    assert logged.experiment_id == client.get_run(champion["run_id"]).info.experiment_id != "0"
    assert logged.source_run_id == champion["run_id"]

    from pipelines.generation import DEFAULT_GUIDANCE

    pipe = GenerationPipeline.from_checkpoint(champion["ckpt"], device="cpu")
    # A row without guidance gets `ditscale sample`'s and the service's default (it got 1.0: other images)
    euler3 = SamplerSettings(sampler="euler", steps=3, guidance=DEFAULT_GUIDANCE)
    expected = pipe.generate_labels([3, 3, 8], [5, 6, 5], euler3)
    expected_g1 = pipe.generate_labels([3], [5], SamplerSettings(sampler="euler", steps=3, guidance=1.0))
    expected_cfg = pipe.generate_labels([2], [11], SamplerSettings(sampler="ddpm", steps=4, guidance=2.5))
    del pipe
    # the model carries its checkpoint, data set record and VAE: the originals can go
    shutil.rmtree(champion["tmp"] / "lat")
    shutil.rmtree(champion["tmp"] / "assets")
    shutil.rmtree(champion["tmp"] / "run")

    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/ditscale@champion")
    finally:
        mlflow.set_tracking_uri(None)
    names = [c.name for c in model.metadata.get_input_schema().inputs]
    assert names == ["prompt", "label", "seed", "steps", "sampler", "guidance"]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["png_base64"]
    assert model.metadata.saved_input_example_info is not None

    df = pd.DataFrame({"label": [3, 3, 8], "seed": [5, 6, 5], "steps": [3, 3, 3], "sampler": ["euler"] * 3})
    out = model.predict(df)
    assert list(out.columns) == ["png_base64"] and len(out) == 3
    got = np.stack([_png(b) for b in out["png_base64"]])
    np.testing.assert_array_equal(got, expected)  # bit-identical to the generation pipeline
    assert not np.array_equal(got[0], got[1]) and not np.array_equal(got[0], got[2])  # seed and label matter

    mixed = pd.DataFrame(
        {"label": [3, 2], "seed": [5, 11], "steps": [3, 4], "sampler": ["euler", "ddpm"], "guidance": [1.0, 2.5]}
    )
    got = np.stack([_png(b) for b in model.predict(mixed)["png_base64"]])
    np.testing.assert_array_equal(got[0], expected_g1[0])
    np.testing.assert_array_equal(got[1], expected_cfg[0])  # per-row sampler, steps and guidance
    # An integer guidance column (JSON `"guidance": 1` gives int64) is a guidance, not a schema error.
    as_int = pd.DataFrame({"label": [3], "seed": [5], "steps": [3], "sampler": ["euler"], "guidance": [1]})
    assert as_int["guidance"].dtype == "int64"
    np.testing.assert_array_equal(_png(model.predict(as_int)["png_base64"][0]), expected_g1[0])

    from pipelines.export.pyfunc import PyfuncInputError

    with pytest.raises(PyfuncInputError, match="needs a 'label' column"):
        model.predict(pd.DataFrame({"seed": [1]}))
    with pytest.raises(PyfuncInputError, match="out of range"):
        model.predict(pd.DataFrame({"label": [10]}))
    with pytest.raises(PyfuncInputError, match="'sampler', row 1: 'plms'"):
        model.predict(pd.DataFrame({"label": [1, 2], "sampler": ["euler", "plms"]}))
    with pytest.raises(PyfuncInputError, match=r"'seed', row 0: 1099511627776 is outside"):
        model.predict(pd.DataFrame({"label": [1], "seed": [2**40]}))
    # A seed column with a gap (pandas: float64 with NaN) passes MLflow's schema; the empty cell takes the default
    # seed, its row index, as an absent column does. Non-integer and infinite cells are named.
    gap = pd.DataFrame({"label": [3, 3], "seed": [5, None], "steps": [3, 3], "sampler": ["euler"] * 2})
    assert gap["seed"].dtype == "float64"
    got = np.stack([_png(b) for b in model.predict(gap)["png_base64"]])
    explicit = pd.DataFrame({"label": [3, 3], "seed": [5, 1], "steps": [3, 3], "sampler": ["euler"] * 2})
    np.testing.assert_array_equal(got, np.stack([_png(b) for b in model.predict(explicit)["png_base64"]]))
    for bad, word in ((2.5, "2.5 is not an integer"), (float("inf"), "inf is not an integer")):
        with pytest.raises(PyfuncInputError, match=rf"'seed', row 0: {word}"):
            model.predict(pd.DataFrame({"label": [1], "seed": [bad]}))


def test_pyfunc_rows_from_lists_and_empty_cells():
    """MLflow turns {"prompt": ["a", "b"]} into ONE row holding the list, which became the prompt "['a', 'b']";
    a blank prompt and pd.NA were taken as prompts ("<NA>")."""
    from pipelines.export.pyfunc import PyfuncInputError, explode_lists, parse_rows

    one = pd.DataFrame({"prompt": [["a cat", "a dog"]], "seed": [[3, 4]], "steps": [5]})
    rows = parse_rows(explode_lists(one), "text")
    assert [(r["prompt"], r["seed"], r["settings"].steps) for r in rows] == [("a cat", 3, 5), ("a dog", 4, 5)]
    with pytest.raises(PyfuncInputError, match="different lengths"):
        explode_lists(pd.DataFrame({"prompt": [["a", "b"]], "seed": [[1, 2, 3]]}))
    for bad in ("  ", pd.NA):
        with pytest.raises(PyfuncInputError, match="column 'prompt', row 1: empty"):
            parse_rows(pd.DataFrame({"prompt": pd.array(["a", bad], dtype="string")}), "text")


def test_champion_grid_and_reuse(champion, capsys):
    from pipelines.infra.tracking import checkpoint_samples

    uri, client, run_id = champion["uri"], champion["client"], champion["run_id"]
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", uri]) == 0, capsys.readouterr().err
    assert f"sample grid: run {run_id} artifact samples/champion.png" in capsys.readouterr().out
    assert {a.path for a in client.list_artifacts(run_id, "samples")} == {"samples/champion.png"}
    grid = np.asarray(Image.open(client.download_artifacts(run_id, "samples/champion.png", str(champion["tmp"]))))
    assert grid.shape == (4 * 32, 4 * 32, 3)  # 16 images of 32 px (8x8 latents, VAE downsample 4)
    # the champion's evaluation settings (config.json train.eval: euler, 3 steps, seed 7), evaluation's seeding rule
    first = checkpoint_samples(champion["ckpt"], sampler="euler", steps=3, guidance=1.0, seed=7, n=2)
    np.testing.assert_array_equal(grid[:32, :32], first[0])
    np.testing.assert_array_equal(grid[:32, 32:64], first[1])

    # promoting again reuses the pyfunc version and logs no second grid
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", uri]) == 0
    assert "reused ditscale version 1" in capsys.readouterr().out
    assert len(client.search_model_versions("name='ditscale'")) == 1


def test_unpackable_checkpoint_is_a_clear_error(champion, capsys):
    (champion["tmp"] / "run" / "step_00000100" / "ema.safetensors").unlink()
    (champion["tmp"] / "run" / "step_00000100" / "model.safetensors").unlink()
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", champion["uri"]]) == 2
    err = capsys.readouterr().err
    assert "does not load" in err and "ema.safetensors: missing (listed in checkpoint.json)" in err, err
    assert champion["client"].search_model_versions("name='ditscale'") == []


@pytest.mark.parametrize("pyfunc", [True, False])
def test_a_checkpoint_whose_weights_are_damaged_is_never_registered(champion, capsys, pyfunc):
    # The alias moved to it (exit 0) and only the sample grid, drawn afterwards, warned; --no-pyfunc checked nothing.
    for name in ("ema.safetensors", "model.safetensors"):
        (champion["tmp"] / "run" / "step_00000100" / name).write_bytes(b"not a safetensors file")
    args = ["--experiment", "grid", "--tracking-uri", champion["uri"], *([] if pyfunc else ["--no-pyfunc"])]
    assert promote_job.main(args) == 2
    err = capsys.readouterr().err
    assert "does not load" in err and "ema.safetensors" in err, err
    assert champion["client"].search_model_versions("name='ditscale'") == []


def test_a_checkpoint_whose_vae_is_gone_is_refused_before_anything_is_registered(champion, capsys):
    """The data set's VAE folder deleted: the model could never load, so no version is registered and the alias does
    not move (it used to register the version, move the alias, then crash drawing the grid)."""
    from pipelines.latents.manifest import Manifest

    ckpt_config = json.loads((champion["tmp"] / "run" / "step_00000100" / "config.json").read_text())
    vae = Manifest.read(ckpt_config["data"]["manifest"]).vae.path
    shutil.rmtree(vae)
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", champion["uri"]]) == 2
    err = capsys.readouterr().err
    assert "cannot package checkpoint" in err and f"VAE {vae}: no such directory" in err, err
    assert champion["client"].search_model_versions("name='ditscale'") == []


def test_repromoting_refreshes_the_versions_tags_and_bundles_the_sampler_statistics(champion, capsys):
    from pipelines.checkpoint_extras import ems_name
    from pipelines.export.pyfunc import bundle_checkpoint

    uri, client = champion["uri"], champion["client"]
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", uri, "--no-sample-grid"]) == 0
    client.set_model_version_tag("ditscale", "1", "fid", "stale")
    assert promote_job.main(["--experiment", "grid", "--tracking-uri", uri, "--no-sample-grid"]) == 0
    assert "reused ditscale version 1" in capsys.readouterr().out
    assert client.get_model_version("ditscale", "1").tags["fid"] == "9.0"
    # dpmsolver-v3 statistics beside the checkpoint travel with the pyfunc bundle.
    (champion["tmp"] / "run" / "step_00000100" / ems_name(2.0)).write_bytes(b"stats")
    bundle_checkpoint(str(champion["ckpt"]), champion["tmp"] / "bundle")
    assert (champion["tmp"] / "bundle" / "checkpoint" / ems_name(2.0)).read_bytes() == b"stats"


def test_the_bundle_carries_every_local_encoder_of_a_multi_encoder_set(tmp_path):
    """An SD3-style set (two encoders joined): neither local encoder was copied nor its path rewritten, so the
    promoted model failed to load once those folders were gone."""
    import json
    from pathlib import Path

    from ditcore.models import build_model
    from pipelines.export.pyfunc import bundle_checkpoint, materialize
    from tests.jobs._train_helpers import make_latent_dataset, save_model_checkpoint

    data = make_latent_dataset(tmp_path / "lat", n=8, num_classes=None, text=(8, 16, 16))
    encoders = []
    for name in ("clip", "t5"):
        d = tmp_path / "enc" / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"name": name}))
        encoders.append({"name": name, "encoder": str(d), "kind": name, "max_length": 4, "dim": 8, "pooled_dim": 8})
    mpath = tmp_path / "lat" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["text"].update(kind="multi", encoder="clip+t5", encoders=encoders)
    mpath.write_text(json.dumps(manifest))
    model = build_model("MMDiT-T", text_dim=16, pooled_dim=16, max_text_len=8)
    ckpt = save_model_checkpoint(tmp_path / "ck" / "step_00000001", model, {"manifest": data}, state={"step": 1})
    artifacts = bundle_checkpoint(ckpt, tmp_path / "bundle")
    assert {"text_encoder_0", "text_encoder_1"} <= set(artifacts)
    shutil.rmtree(tmp_path / "enc")  # the originals go: the model must carry its own
    ck = materialize(artifacts, tmp_path / "work")
    used = json.loads(
        (Path(json.loads((Path(ck) / "config.json").read_text())["data"]["manifest"]) / "manifest.json").read_text()
    )
    assert len(used["text"]["encoders"]) == 2, used["text"]
    for i, part in enumerate(used["text"]["encoders"]):
        assert json.loads((Path(part["encoder"]) / "config.json").read_text())["name"] == ("clip", "t5")[i]


def test_a_remote_checkpoint_is_loaded_before_it_is_registered(champion, capsys, s3_bucket):
    """An s3:// champion was registered unchecked with --no-pyfunc (the alias moved to weights that never load); it
    is now downloaded and loaded first, like a local one."""
    from pipelines.infra import storage
    from pipelines.infra.tracking import read_json_artifact

    ckpt = f"{s3_bucket}/run/step_00000100"
    storage.upload_dir(champion["ckpt"], ckpt)
    client = champion["client"]
    (point,) = read_json_artifact(client, champion["run_id"], POINTS_ARTIFACT)
    client.log_text(champion["run_id"], json.dumps([{**point, "checkpoint": ckpt}]), POINTS_ARTIFACT)
    args = ["--experiment", "grid", "--tracking-uri", champion["uri"], "--no-pyfunc"]
    storage.write_bytes(f"{ckpt}/ema.safetensors", b"not a safetensors file")
    assert promote_job.main(args) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt!r} does not load" in err and "ema.safetensors" in err, err
    assert client.search_model_versions("name='ditscale'") == []
    storage.upload_dir(champion["ckpt"], ckpt)  # the intact weights again
    assert promote_job.main(args) == 0, capsys.readouterr().err
    (mv,) = client.search_model_versions("name='ditscale'")
    assert mv.source == ckpt
