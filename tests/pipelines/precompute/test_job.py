"""End-to-end precompute on a local Ray: built-in data with a tiny VAE, MiniLM and a feature net; a folder with
tiny CLIP; the output read back three ways; idempotent rerun; configuration errors before any work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from ditcore.data.builtin import BuiltinSpec, render_batch
from pipelines.cli.precompute import main
from pipelines.latents.reader import load_fid_stats, load_latents_numpy, load_null_text, read_manifest
from pipelines.precompute.job import PrecomputeConfig, run_precompute
from tests.pipelines._precompute_helpers import IMAGE_SIZE, TinyModels, feature_dim, make_folder, precompute_config

# End-to-end Ray runs (actor start-up, model loading): > 10 s each on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _cfg(models: TinyModels, out, source: dict | None = None, actors: int = 1, **extra) -> PrecomputeConfig:
    """20 built-in images in shards of 8 (unless `source`), batches of 8 on `actors` actors; `extra` sections as
    given."""
    source = source or {"kind": "builtin", "count": 20, "shard_size": 8}
    return precompute_config(out, models, source, compute={"batch_size": 8, "actors": actors}, **extra)


@pytest.fixture(scope="module")
def builtin_run(tiny):
    out = tiny.root / "builtin-out"
    summary = run_precompute(_cfg(tiny, out))
    return out, summary


def test_builtin_counts_manifest_and_files(builtin_run, tiny):
    out, summary = builtin_run
    assert (summary["input"], summary["written"], summary["failed"]) == (20, 20, 0)
    assert summary["shards"] == 3 and summary["shards_skipped"] == 0 and summary["rows_this_run"] == 20
    m = read_manifest(str(out)).to_dict()
    assert m["counts"] == {"input": 20, "written": 20, "failed": 0, "duplicate_ids": 0}
    assert m["num_classes"] == 30 and m["image_size"] == IMAGE_SIZE and m["source"]["kind"] == "builtin"
    assert m["vae"] == {
        "path": tiny.vae,
        "revision": None,
        "scaling_factor": 0.5,
        "shift_factor": 0.1,
        "latent_channels": 4,
        "downsample": 4,
        "latent_size": 8,
        "subfolder": None,
    }
    assert m["text"]["encoder"] == "minilm" and (
        m["text"]["max_length"],
        m["text"]["dim"],
        m["text"]["pooled_dim"],
    ) == (32, 384, 384)
    assert m["fid"]["feature_dim"] == feature_dim(tiny.feature_net) and m["fid"]["stats"] == "fid_stats.safetensors"
    assert len(m["latent_stats"]["mean"]) == 4 and all(s > 0 for s in m["latent_stats"]["std"])
    assert m["config"]["source"]["count"] == 20 and m["code_version"]
    for name in ("failures.parquet", "null_text.safetensors", "fid_stats.safetensors", "manifest.json"):
        assert (out / name).is_file()
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "part-00000-0000000.parquet",
        "part-00001-0000000.parquet",
        "part-00002-0000000.parquet",
    ]
    assert pq.read_table(out / "failures.parquet").num_rows == 0


def test_schema_reads_back_three_ways(builtin_run):
    import ray

    out, _ = builtin_run
    table = pq.read_table(out / "data")
    assert table.num_rows == 20 and table.schema.field("id").type == "string"
    assert json.loads(table.schema.field("latent_mean").metadata[b"shape"]) == [4, 8, 8]
    assert table.schema.field("label").type == "int32"
    df = pd.read_parquet(out / "data")
    assert len(df) == 20 and df["id"].is_unique
    assert np.asarray(df["latent_mean"].iloc[0]).dtype == np.float16 and len(df["latent_mean"].iloc[0]) == 4 * 8 * 8
    ds = ray.data.read_parquet(str(out / "data"))
    assert ds.count() == 20 and set(ds.schema().names) >= {"id", "latent_mean", "text_emb", "text_mask", "caption"}


def test_latents_match_a_direct_encode_including_flip(builtin_run, tiny):
    from ditcore.preprocess import images_to_tensor
    from pipelines.encoders.vae import encode_images, load_vae

    out, _ = builtin_run
    rows = load_latents_numpy(str(out))
    assert rows["latent_mean"].shape == (20, 4, 8, 8) and rows["latent_mean"].dtype == np.float16
    assert rows["text_emb"].shape == (20, 32, 384) and rows["text_mask"].dtype == bool
    order = np.argsort(rows["id"])
    batch = render_batch(0, 20, BuiltinSpec(image_size=IMAGE_SIZE))
    assert list(rows["id"][order]) == list(batch["id"])
    assert list(rows["caption"][order]) == list(batch["caption"]) and list(rows["label"][order]) == list(batch["label"])
    vae = load_vae(tiny.vae)
    x = images_to_tensor(batch["image"])
    mean, std = encode_images(vae, x)
    mean_f, _ = encode_images(vae, torch.flip(x, dims=[-1]))
    np.testing.assert_allclose(rows["latent_mean"][order].astype(np.float32), mean.numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(rows["latent_std"][order].astype(np.float32), std.numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(rows["latent_mean_flip"][order].astype(np.float32), mean_f.numpy(), atol=2e-3, rtol=2e-3)


def test_fid_stats_and_null_text(builtin_run, tiny):
    from ditcore.metrics.features import load_feature_net
    from ditcore.metrics.fid import feature_stats

    out, _ = builtin_run
    mu, sigma = load_fid_stats(str(out))
    feats = load_feature_net(tiny.feature_net).features(
        render_batch(0, 20, BuiltinSpec(image_size=IMAGE_SIZE))["image"]
    )
    mu_ref, sigma_ref = feature_stats(feats.numpy())
    f = feature_dim(tiny.feature_net)
    assert mu.dtype == np.float64 and sigma.shape == (f, f)
    np.testing.assert_allclose(mu, mu_ref, atol=1e-4)
    np.testing.assert_allclose(sigma, sigma_ref, atol=1e-4)
    null = load_null_text(str(out))
    assert null["text_emb"].shape == (32, 384) and null["text_mask"].dtype == torch.bool
    assert int(null["text_mask"].sum()) == 2  # [CLS] [SEP]


def test_two_actors_write_the_same_rows_and_statistics_as_one(builtin_run, tiny, tmp_path):
    """The quickstart runs one encoder actor per CPU: the data set must not depend on how many there are."""
    one, _ = builtin_run
    two = tmp_path / "two-actors"
    summary = run_precompute(_cfg(tiny, two, actors=2))
    assert (summary["written"], summary["failed"]) == (20, 0)
    files = sorted(p.name for p in (one / "data").iterdir())
    assert files == sorted(p.name for p in (two / "data").iterdir())
    for name in files:
        a, b = pq.read_table(one / "data" / name), pq.read_table(two / "data" / name)
        assert a.column_names == b.column_names
        for col in a.column_names:
            assert a.column(col).equals(b.column(col)), f"{name}: column {col} differs between 1 and 2 actors"
    for x, y in zip(load_fid_stats(str(one)), load_fid_stats(str(two))):
        np.testing.assert_array_equal(x, y)
    m1, m2 = read_manifest(str(one)).to_dict(), read_manifest(str(two)).to_dict()
    assert m1["latent_stats"] == m2["latent_stats"] and m1["counts"] == m2["counts"]
    assert m2["config"]["compute"]["actors"] == 2


def test_rerun_through_the_cli_skips_finished_shards(builtin_run, tiny, capsys):
    out, first = builtin_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    rc = main(
        [
            "output=" + str(out),
            f"image_size={IMAGE_SIZE}",
            "progress=false",
            "source.count=20",
            "source.shard_size=8",
            f"vae.path={tiny.vae}",
            f"fid.feature_net={tiny.feature_net}",
            "compute.batch_size=8",
        ]
    )
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "20 input = 20 written + 0 failed" in line and "3/3 shards already done" in line and "rows/s" in line
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == before
    ids = pq.read_table(out / "data", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 20


def test_folder_source_with_tiny_clip_and_no_fid(tiny, tmp_path):
    root = make_folder(tmp_path / "imgs", n_per_class=2, classes=("cat", "dog"))
    out = tmp_path / "out"
    cfg = _cfg(
        tiny, out, source={"kind": "folder", "path": str(root), "shard_size": 3}, text={"encoder": tiny.clip}, fid=None
    )
    s = run_precompute(cfg)
    assert (s["input"], s["written"], s["failed"]) == (4, 4, 0)
    m = read_manifest(str(out)).to_dict()
    assert m["classes"] == ["cat", "dog"] and m["num_classes"] == 2 and m["fid"] is None
    assert (m["text"]["max_length"], m["text"]["dim"], m["text"]["pooled_dim"]) == (77, 32, 16)
    rows = load_latents_numpy(str(out))
    assert sorted(rows["id"]) == ["cat/000.png", "cat/001.png", "dog/000.png", "dog/001.png"]
    assert rows["text_emb"].shape == (4, 77, 32) and rows["text_pooled"].shape == (4, 16)
    assert sorted(rows["label"].tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("case", ["missing_path", "unknown_encoder", "unwritable_output", "bad_yaml_key", "bad_type"])
def test_config_errors_exit_nonzero_before_any_work(case, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = [f"output={out}", f"vae.path={tiny.vae}", f"fid.feature_net={tiny.feature_net}", "progress=false"]
    expect = ""
    if case == "missing_path":
        args += ["source.kind=folder", f"source.path={tmp_path / 'no-such-dir'}"]
        expect = "no-such-dir"
    elif case == "unknown_encoder":
        args += ["text.encoder=bogus-encoder"]
        expect = "text.encoder"
    elif case == "unwritable_output":
        (tmp_path / "a-file").write_text("x")
        args[0] = f"output={tmp_path / 'a-file' / 'out'}"
        expect = "not writable"
    elif case == "bad_yaml_key":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("source:\n  kind: builtin\n  cuont: 5\n")
        args = ["--config", str(cfg)] + args
        expect = "source.cuont"
    elif case == "bad_type":
        args += ["compute.actors=many"]
        expect = "compute.actors"
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0 and expect in err, err
    assert not out.exists()  # validation failed before anything was written
