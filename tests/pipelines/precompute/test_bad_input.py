"""A corpus of bad files: each lands in failures.parquet with a reason, the job exits 0, input == written + failed."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipelines.cli.precompute import main
from pipelines.latents.reader import load_latents_numpy, read_failures, read_manifest
from tests.pipelines._precompute_helpers import make_bad_folder, tiny_clip, tiny_vae

# End-to-end Ray runs (actor start-up, model loading): > 10 s each on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

S = 32


def test_bad_file_corpus(tmp_path, capsys):
    expected = make_bad_folder(tmp_path / "corpus", size=S)
    vae, clip = tiny_vae(tmp_path / "vae"), tiny_clip(tmp_path / "clip")
    out = tmp_path / "out"
    rc = main(
        [
            f"output={out}",
            f"image_size={S}",
            "progress=false",
            "source.kind=folder",
            f"source.path={tmp_path / 'corpus'}",
            "source.shard_size=5",
            "source.labels_from_dirs=false",
            f"vae.path={vae}",
            f"text.encoder={clip}",
            "fid=null",
            "compute.batch_size=4",
        ]
    )
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0
    # 3 good + 5 mode conversions (palette, alpha, CMYK, 16-bit, gray) + 6 bad.
    assert "14 input = 8 written + 6 failed" in summary, summary
    m = read_manifest(str(out)).to_dict()
    assert m["counts"] == {"input": 14, "written": 8, "failed": 6, "duplicate_ids": 0}
    fails = read_failures(str(out)).to_pylist()
    reasons = {f["id"]: f["reason"] for f in fails}
    assert set(reasons) == set(expected)
    for rel, keyword in expected.items():
        assert keyword in reasons[rel].lower(), (rel, reasons[rel])
    assert all(f["source"].endswith(f["id"]) for f in fails)
    rows = load_latents_numpy(str(out))
    assert sorted(rows["id"]) == sorted(
        [f"good/ok{i}.png" for i in range(3)]
        + [f"modes/{n}" for n in ("alpha.png", "cmyk.jpg", "gray.png", "gray16.png", "palette.png")]
    )
    written = set(pq.read_table(out / "data", columns=["id"]).column("id").to_pylist())
    assert not written & set(reasons)  # a failed id is never also written
