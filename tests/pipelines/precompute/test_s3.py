"""s3:// input and output against a real moto_server on 127.0.0.1: parquet source on S3 -> latent data set on S3."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditcore.config import from_dict
from pipelines.infra import storage
from pipelines.latents.reader import load_fid_stats, load_latents_numpy, read_failures, read_latents, read_manifest
from pipelines.precompute.job import PrecomputeConfig, SourceConfig, read_dataset, run_precompute
from pipelines.sources import plan_source
from tests.pipelines._precompute_helpers import make_parquet, make_tar, tiny_feature_net, tiny_vae

# End-to-end Ray runs (actor start-up, model loading): > 10 s each on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

S = 32


def _upload(local, uri):
    storage.write_bytes(uri, local.read_bytes())


def test_parquet_on_s3_to_latents_on_s3(s3_bucket, tmp_path):
    src = make_parquet(tmp_path / "a.parquet", n=5, rows_per_group=5)
    table = pq.read_table(src)
    # One undecodable row: it must land in failures.parquet on S3 too.
    table = table.set_column(0, "img", pa.array(table.column("img").to_pylist()[:4] + [b"not an image"], pa.binary()))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(f"{s3_bucket}/raw/part-0.parquet", buf.getvalue())
    out = f"{s3_bucket}/latents/v1"
    cfg = from_dict(
        PrecomputeConfig,
        {
            "output": out,
            "image_size": S,
            "progress": False,
            "source": {
                "kind": "parquet",
                "path": f"{s3_bucket}/raw",
                "image_column": "img",
                "caption_column": "text",
                "label_column": "cls",
                "shard_size": 3,
            },
            "vae": {"path": str(tiny_vae(tmp_path / "vae"))},
            "fid": {"feature_net": str(tiny_feature_net(tmp_path / "fn"))},
            "text": None,
            "compute": {"batch_size": 4},
        },
    )
    s = run_precompute(cfg)
    assert (s["input"], s["written"], s["failed"]) == (5, 4, 1)
    m = read_manifest(out).to_dict()
    assert m["counts"] == {"input": 5, "written": 4, "failed": 1, "duplicate_ids": 0} and m["num_classes"] == 3
    names = storage.listdir(out)
    assert {"manifest.json", "failures.parquet", "fid_stats.safetensors", "data"} <= set(names)
    fails = read_failures(out).to_pylist()
    assert fails[0]["id"] == "part-0.parquet:4" and "not an image" in fails[0]["reason"]
    rows = load_latents_numpy(out)
    assert list(rows["id"]) == [f"part-0.parquet:{i}" for i in range(4)] and rows["latent_mean"].shape == (4, 4, 8, 8)
    assert list(rows["label"]) == [0, 1, 2, 0] and rows["caption"][1] == "a small red circle 1"
    assert read_latents(out).count() == 4
    assert load_fid_stats(out)[0].shape == (m["fid"]["feature_dim"],)
    # Resume on S3: a second run skips every committed shard and writes nothing.
    again = run_precompute(cfg)
    assert again["shards_skipped"] == s["shards"] and again["rows_this_run"] == 0


def test_webdataset_and_folder_read_from_s3(s3_bucket, tmp_path):
    tar = make_tar(tmp_path / "w" / "000.tar", 0, 3)
    _upload(tar, f"{s3_bucket}/wds/000.tar")
    src = SourceConfig(kind="webdataset", path=f"{s3_bucket}/wds")
    cfg = from_dict(
        PrecomputeConfig,
        {"source": {"kind": "webdataset", "path": f"{s3_bucket}/wds"}, "image_size": S, "progress": False},
    )
    plan = plan_source(src, S)
    rows = sorted(read_dataset(cfg, plan, plan.shards).take_all(), key=lambda r: r["order"])
    assert [r["id"] for r in rows] == [f"000.tar/sample{i:04d}" for i in range(3)]
    assert all(r["error"] == "" and r["image"].shape == (S, S, 3) for r in rows)
    assert np.unique([r["label"] for r in rows]).tolist() == [0, 1]
