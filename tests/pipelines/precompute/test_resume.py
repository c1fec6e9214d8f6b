"""Resume: a run killed with SIGKILL mid-way and started again ends with exactly the rows of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ditcore.config import from_dict
from pipelines.latents.reader import load_fid_stats, load_latents_numpy, read_manifest
from pipelines.precompute.job import PrecomputeConfig, run_precompute
from tests.conftest import REPO_ROOT
from tests.pipelines._precompute_helpers import tiny_feature_net, tiny_vae

# End-to-end Ray runs (actor start-up, model loading): > 10 s each on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

S = 32
COUNT, SHARD = 240, 4


def _overrides(out: Path, vae: Path, fn: Path) -> list[str]:
    return [
        f"output={out}",
        f"image_size={S}",
        "progress=false",
        f"source.count={COUNT}",
        f"source.shard_size={SHARD}",
        f"vae.path={vae}",
        f"fid.feature_net={fn}",
        "text=null",
        f"compute.batch_size={SHARD}",
    ]


def _cfg(overrides: list[str]) -> PrecomputeConfig:
    from ditcore.config import apply_overrides

    return from_dict(PrecomputeConfig, apply_overrides({}, overrides))


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    import ray

    vae, fn = tiny_vae(tmp_path / "vae"), tiny_feature_net(tmp_path / "fn")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    # The killed run is a separate driver process on this module's Ray cluster, as `ray job submit` would run it.
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "pipelines.precompute", *_overrides(killed, vae, fn), f"compute.ray_address={address}"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = killed / "_progress"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = list(progress.glob("part-*.json")) if progress.exists() else []
            if len(done) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"precompute exited early with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("no shard was committed before the deadline")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "manifest.json").exists(), "the run finished before it was killed; the test proves nothing"
    committed = len(list(progress.glob("part-*.json")))
    assert 2 <= committed < COUNT // SHARD

    resumed = run_precompute(_cfg(_overrides(killed, vae, fn)))
    assert resumed["shards_skipped"] >= committed and resumed["rows_this_run"] < COUNT
    assert resumed["input"] == resumed["written"] + resumed["failed"] == COUNT

    run_precompute(_cfg(_overrides(clean, vae, fn)))
    a, b = load_latents_numpy(str(killed)), load_latents_numpy(str(clean))
    ids_a = pq.read_table(killed / "data", columns=["id"]).column("id").to_pylist()
    assert len(ids_a) == len(set(ids_a)) == COUNT  # no duplicates from the killed run's partial shard
    assert list(a["id"]) == list(b["id"])  # same ids, same order (shard order)
    np.testing.assert_allclose(a["latent_mean"].astype(np.float32), b["latent_mean"].astype(np.float32), atol=1e-3)
    assert read_manifest(str(killed)).counts == read_manifest(str(clean)).counts
    np.testing.assert_allclose(load_fid_stats(str(killed))[0], load_fid_stats(str(clean))[0], atol=1e-6)
    assert not [p for p in (killed / "data").iterdir() if p.name.endswith(".tmp")]

    # Rerunning a finished output does no work and changes nothing.
    again = run_precompute(_cfg(_overrides(killed, vae, fn)))
    assert again["rows_this_run"] == 0 and again["shards_skipped"] == COUNT // SHARD


def test_changed_config_in_same_output_is_refused(tmp_path):
    from ditcore.config import ConfigError

    vae, fn = tiny_vae(tmp_path / "vae"), tiny_feature_net(tmp_path / "fn")
    out = tmp_path / "out"
    run_precompute(
        _cfg(
            _overrides(out, vae, fn)[:3]
            + ["source.count=4", "source.shard_size=4", f"vae.path={vae}", "fid=null", "text=null"]
        )
    )
    with pytest.raises(ConfigError, match="different source/encoder config"):
        run_precompute(
            _cfg(
                _overrides(out, vae, fn)[:3]
                + ["source.count=4", "source.shard_size=4", f"vae.path={vae}", "fid=null", "text=null", "source.seed=1"]
            )
        )


def test_resume_clears_a_shard_part_that_no_marker_names(tmp_path):
    """A part killed after its data file but before its marker leaves a file no marker names (and a resume with
    another compute.chunk_rows cuts the shard into parts of other names): redoing the shard must still clear it,
    else every reader, which lists data/, sees its rows twice."""
    import shutil

    vae, fn = tiny_vae(tmp_path / "vae"), tiny_feature_net(tmp_path / "fn")
    out = tmp_path / "out"
    base = _overrides(out, vae, fn)[:3] + ["source.count=8", "source.shard_size=4", f"vae.path={vae}", "fid=null"]
    base += ["text=null"]
    run_precompute(_cfg(base))
    data, prog = out / "data", out / "_progress"
    # Shard 0 as a killed run leaves it: a data file without a marker, and no marker for the shard at all.
    shutil.copy(data / "part-00000-0000000.parquet", data / "part-00000-0000002.parquet")
    (prog / "part-00000-0000000.json").unlink()
    resumed = run_precompute(_cfg(base + ["compute.chunk_rows=4"]))
    assert resumed["shards_skipped"] == 1 and resumed["rows_this_run"] == 4
    assert not (data / "part-00000-0000002.parquet").exists()
    ids = pq.read_table(data, columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 8
    assert resumed["input"] == resumed["written"] == 8
    assert (data / "part-00001-0000000.parquet").exists()  # the complete shard's files are kept
