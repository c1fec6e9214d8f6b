"""`ditscale data` (and `concepts`) never destroy what sits at or around their output: a directory a command writes
whole must be new, empty or its own earlier output, apart from the inputs and not the working directory."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.cli.data import main as data_main
from pipelines.infra import storage
from tests.jobs._train_helpers import make_latent_dataset
from tests.pipelines.cli.test_data_cli import _colour_folder
from tests.pipelines.test_datasets import _write_fmnist

VAE = ["train-vae", "steps=1", "batch_size=2", "scale_images=2", "eval_images=2", "progress=false"]


def test_encoder_outputs_that_would_replace_something_else_are_refused_before_training(
    tmp_path, monkeypatch, capsys, s3_bucket
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("keep")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep")
    for out, needle in (
        (".", "give the VAE's own directory"),  # `out=.` replaced the working directory
        ("", "give the VAE's own directory"),  # so did an empty `out=` (an unset $VAR)
        (str(tmp_path.parent), "is the working directory or holds it"),
        ("precious", "is a directory with other content (not a VAE: no config.json + diffusion_pytorch_model"),
    ):
        assert data_main([*VAE, f"out={out}"]) == 2
        assert needle in capsys.readouterr().err
    assert data_main([*VAE, "threads=-1", "out=v"]) == 2
    assert "threads: must be >= 0" in capsys.readouterr().err
    # A training checkpoint or a diffusers model folder holds the marker files too (config.json + weights): it was
    # replaced whole by the VAE or feature net.
    (tmp_path / "ck").mkdir()
    for name in ("config.json", "model.safetensors", "diffusion_pytorch_model.safetensors", "checkpoint.json"):
        (tmp_path / "ck" / name).write_text("{}")
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "config.json").write_text('{"_class_name": "DiTTransformer2DModel"}')
    (tmp_path / "dit" / "diffusion_pytorch_model.safetensors").write_text("w")
    for out, needle in (("ck", "is a training checkpoint"), ("dit", "holds DiTTransformer2DModel, not an earlier VAE")):
        assert data_main([*VAE, f"out={out}"]) == 2
        assert needle in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "ck").iterdir())[0] == "checkpoint.json"
    assert (tmp_path / "mine.txt").read_text() == "keep" and (tmp_path / "precious" / "notes.txt").is_file()

    # The same on S3 (an S3 publish clears the prefix first): other objects, a bucket, a checkpoint are refused.
    bucket = s3_bucket
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "checkpoint.json"):
        storage.write_bytes(f"{bucket}/ck/{name}", b"{}")
    storage.write_bytes(f"{bucket}/shared/keep.parquet", b"keep")
    for out, needle in (
        (bucket, "is a bucket, not a folder in one"),
        (f"{bucket}/shared", "is an S3 folder with other content"),
        (f"{bucket}/ck", "is a training checkpoint"),
    ):
        assert data_main([*VAE, f"out={out}"]) == 2
        assert needle in capsys.readouterr().err
    assert storage.listdir(f"{bucket}/shared") == ["keep.parquet"] and len(storage.listdir(f"{bucket}/ck")) == 3

    # A classifier written over its own source (or the folder holding it) is refused; the data stays.
    data = _colour_folder(tmp_path / "colours" / "train", 4, 0)
    argv = ["classifier", "--source", str(data), "--steps", "1", "--batch-size", "4", "--width", "4"]
    for out in (tmp_path / "colours", data):
        assert data_main([*argv, "--out", str(out)]) == 2
        assert "overlaps the input" in capsys.readouterr().err
    assert len(list(data.rglob("*.png"))) == 12
    # Its own earlier output is replaced (a rerun), the default name of `--source .` is the folder's name.
    assert data_main([*argv, "--out", "cls", "--test-limit", "3"]) == 0
    assert data_main([*argv, "--out", "cls", "--test-limit", "3"]) == 0
    capsys.readouterr()


def test_fetch_and_export_never_mix_or_delete_their_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_fmnist(tmp_path / "idx", n_train=10, n_test=4)
    fetch = ["fetch", "fashion-mnist", "--source-dir", str(tmp_path / "idx")]
    assert data_main([*fetch, "--out", str(tmp_path / "idx"), "--overwrite"]) == 2  # deleted the IDX files
    assert "overlaps --source-dir" in capsys.readouterr().err
    assert data_main([*fetch, "--out", "s3://bucket/fm"]) == 2  # made a local './s3:' folder
    assert "must be a local directory" in capsys.readouterr().err
    assert len(list((tmp_path / "idx").iterdir())) == 4 and not (tmp_path / "s3:").exists()

    export = ["export-builtin", "--format", "parquet", "--image-size", "32", "--out", "ebp"]
    assert data_main([*export, "--count", "20"]) == 0
    assert data_main([*export, "--count", "10", "--seed", "3"]) == 2  # its old shards would be read with these
    assert "is not empty" in capsys.readouterr().err
    assert data_main([*export, "--count", "10", "--seed", "3", "--overwrite"]) == 0
    ids = pq.read_table(tmp_path / "ebp").column("id").to_pylist()
    assert len(ids) == 10 and all(i.startswith("builtin-3-") for i in ids)
    assert data_main(["export-builtin", "--out", ".", "--count", "2", "--overwrite"]) == 2
    assert (tmp_path / "idx").is_dir()
    assert json.loads((tmp_path / "ebp" / "_builtin_export.json").read_text())["count"] == 10  # written last
    # --overwrite replaced any folder with content: only an earlier export now.
    capsys.readouterr()
    assert data_main(["export-builtin", "--out", "idx", "--count", "2", "--overwrite"]) == 2
    assert "not an earlier export" in capsys.readouterr().err and len(list((tmp_path / "idx").iterdir())) == 4


def test_inspect_writes_only_a_png_and_previews_pixel_space_sets(tmp_path, capsys):
    from pipelines.precompute.sink import failures_schema

    pixels = make_latent_dataset(tmp_path / "pix", n=6, channels=3, size=8, num_classes=None)  # vae.path null
    pq.write_table(failures_schema().empty_table(), tmp_path / "pix" / "failures.parquet")
    manifest = (tmp_path / "pix" / "manifest.json").read_text()
    assert data_main(["inspect", pixels, "--preview", f"{pixels}/manifest.json"]) == 2  # overwrote the manifest
    assert "only preview.png may go there" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("keep")
    assert data_main(["inspect", pixels, "--preview", str(tmp_path / "notes.txt")]) == 2
    assert "exists and is not a PNG" in capsys.readouterr().err
    assert (tmp_path / "pix" / "manifest.json").read_text() == manifest
    assert (tmp_path / "notes.txt").read_text() == "keep"
    # A pixel-space set has no VAE to load (this used to fail on 'VAE None'): its rows are the images.
    assert data_main(["inspect", pixels, "--rows", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert Image.open(info["preview"]).size == (3 * (8 + 2) + 2, 8 + 4)
    assert data_main(["inspect", pixels, "--rows", "3"]) == 0  # the PNG it wrote may be written again


def test_concepts_refuses_a_remote_out(tmp_path, capsys):
    from jobs.cli.concepts import main as concepts_main

    assert concepts_main([str(tmp_path / "ck"), "--out", "s3://bucket/plots"]) == 2  # wrote './s3:/bucket/plots'
    assert "--out 's3://bucket/plots': must be a local path" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["pipelines.cli.sample", "--checkpoint", "{ck}", "--out", "s3://bucket/grid.png"],
        ["jobs.cli.fit", "--experiment", "x", "--out", "s3://bucket/fits"],
        ["jobs.cli.mup_report", "--points", "{ck}/points.json", "--out", "s3://bucket/mup"],
        ["jobs.cli.quickstart", "--tiny", "--out", "s3://bucket/qs"],
    ],
)
def test_local_only_outputs_refuse_a_uri_instead_of_writing_a_folder_named_s3(tmp_path, monkeypatch, capsys, command):
    """Path("s3://bucket/x") is the local folder s3:/bucket/x: these commands wrote there and reported success."""
    import importlib

    monkeypatch.chdir(tmp_path)
    module, *argv = command
    argv = [a.format(ck=tmp_path / "ck") for a in argv]
    try:
        rc = importlib.import_module(module).main(argv)
    except SystemExit as e:  # argparse's error(): exit 2
        rc = e.code
    assert rc == 2
    assert "must be a local path" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


def test_ems_and_concepts_name_a_checkpoint_without_a_data_set(tmp_path, capsys):
    from jobs.cli.concepts import main as concepts_main
    from jobs.cli.ems import main as ems_main
    from tests.serve.test_app import make_class_checkpoint

    ckpt = str(make_class_checkpoint(tmp_path / "ck"))  # pixel space, no config.json data.manifest
    assert ems_main([ckpt, "--num-tasks", "0"]) == 2  # said "None is not a complete latent data set"
    assert "records no data set (config.json data.manifest); the EMS needs its latents" in capsys.readouterr().err
    assert concepts_main([ckpt, "--out", str(tmp_path / "plots")]) == 2
    assert "records no data set" in capsys.readouterr().err


def test_concepts_response_checks_the_checkpoint_before_writing_anything(tmp_path, capsys):
    from jobs.cli.concepts import main as concepts_main
    from tests.jobs._train_helpers import make_eval_dataset, perturbed_model, save_model_checkpoint

    data, _ = make_eval_dataset(tmp_path / "ev", n=8, num_classes=4)  # a class set with its VAE and feature net
    model = perturbed_model("DiT-T/4", in_channels=4, input_size=8, num_classes=4)
    ckpt = save_model_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001", model, {"manifest": data})
    argv = [ckpt, "--num-samples", "8", "--batch-size", "8", "--response", "red", "--out", str(tmp_path / "k")]
    assert concepts_main(argv) == 2
    assert "--response needs a text-conditioned checkpoint" in capsys.readouterr().err
    # the directions and the plot used to be written before the curve found it could not be measured
    assert not (tmp_path / "k").exists() and not list((tmp_path / "run").rglob("concepts*"))
