"""The one reader used by training/serving: manifest, Ray Dataset with real shapes, numpy loader, null
text, FID stats."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pipelines.latents.reader import (
    LatentDatasetError,
    load_fid_stats,
    load_latents_numpy,
    load_null_text,
    read_latents,
    read_manifest,
    to_model_space,
)
from pipelines.precompute.job import run_precompute
from tests.pipelines._precompute_helpers import IMAGE_SIZE, precompute_config

# End-to-end Ray runs (actor start-up, model loading): > 10 s each on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("ds") / "out"
    source = {"kind": "builtin", "count": 12, "shard_size": 5}
    text = {"encoder": tiny.t5, "max_length": 16}
    run_precompute(precompute_config(out, tiny, source, text=text, compute={"batch_size": 4}))
    return out


def test_read_manifest_and_incomplete_dataset(dataset, tmp_path):
    m = read_manifest(str(dataset)).to_dict()
    assert m["counts"]["written"] == 12 and m["text"]["dim"] == 32 and m["text"]["max_length"] == 16
    assert m["columns"]["text_emb"] == {"dtype": "float16", "shape": [16, 32]}
    (tmp_path / "half").mkdir()
    with pytest.raises(LatentDatasetError, match="no manifest.json"):
        read_manifest(str(tmp_path / "half"))


def test_load_latents_numpy_shapes_and_limit(dataset):
    rows = load_latents_numpy(str(dataset))
    assert list(rows["id"]) == [f"builtin-0-{i:08d}" for i in range(12)]  # shard order = index order
    assert rows["latent_mean"].shape == (12, 4, 8, 8) and rows["latent_std_flip"].dtype == np.float16
    assert rows["text_emb"].shape == (12, 16, 32) and rows["text_mask"].shape == (12, 16)
    assert rows["text_pooled"].shape == (12, 32) and rows["label"].dtype == np.int32
    first = load_latents_numpy(str(dataset), limit=7, columns=["id", "latent_mean"])
    assert set(first) == {"id", "latent_mean"} and list(first["id"]) == list(rows["id"][:7])
    np.testing.assert_array_equal(first["latent_mean"], rows["latent_mean"][:7])


def test_read_latents_ray_dataset_rows_have_real_shapes(dataset):
    rows = load_latents_numpy(str(dataset))
    got = {r["id"]: r for r in read_latents(str(dataset)).take_all()}
    assert len(got) == 12
    r = got["builtin-0-00000003"]
    assert r["latent_mean"].shape == (4, 8, 8) and r["text_emb"].shape == (16, 32) and r["text_mask"].dtype == bool
    np.testing.assert_array_equal(r["latent_mean_flip"], rows["latent_mean_flip"][3])
    batch = next(iter(read_latents(str(dataset), columns=["id", "latent_mean", "label"]).iter_batches(batch_size=6)))
    assert batch["latent_mean"].shape == (6, 4, 8, 8) and set(batch) == {"id", "latent_mean", "label"}


def test_null_text_fid_stats_and_their_absence(dataset, tmp_path):
    null = load_null_text(str(dataset))
    assert null["text_emb"].shape == (16, 32) and null["text_emb"].dtype == torch.float16
    assert null["text_mask"].shape == (16,) and null["text_pooled"].shape == (32,)
    mu, sigma = load_fid_stats(str(dataset))
    f = json.loads((dataset / "manifest.json").read_text())["fid"]["feature_dim"]
    assert f > 0 and mu.shape == (f,) and sigma.shape == (f, f) and np.allclose(sigma, sigma.T)
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["text"], m["fid"] = None, None
    (copy / "manifest.json").write_text(json.dumps(m))
    assert load_null_text(str(copy)) is None
    with pytest.raises(LatentDatasetError, match="no FID reference statistics"):
        load_fid_stats(str(copy))


def test_to_model_space():
    mean, std = torch.ones(2, 4, 8, 8), torch.full((2, 4, 8, 8), 0.5)
    assert torch.allclose(to_model_space(mean, std, 0.5, 0.1), torch.full_like(mean, 0.45))
    eps = torch.ones_like(mean)
    assert torch.allclose(to_model_space(mean, std, 2.0, 0.0, eps), torch.full_like(mean, 3.0))


def test_data_inspect_cli_prints_summary_and_writes_preview(dataset, tmp_path, capsys):
    from PIL import Image

    from pipelines.cli.data import main as data_main

    preview = tmp_path / "grid.png"
    assert data_main(["inspect", str(dataset), "--preview", str(preview), "--rows", "6"]) == 0
    out = capsys.readouterr().out
    assert "12 written, 0 failed, 12 input" in out and "latents 4x8x8" in out and "latent_mean" in out
    img = Image.open(preview)
    assert img.size == (6 * (IMAGE_SIZE + 2) + 2, IMAGE_SIZE + 4)  # one row of 6 decoded 32 px images
    assert data_main(["inspect", str(tmp_path / "nothing")]) == 2
