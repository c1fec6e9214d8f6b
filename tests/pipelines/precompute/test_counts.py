"""Every input counted, in samples, end to end: a WebDataset tar cut off mid-sample keeps the samples read before
the cut and reports its unread rest as a failure row; a sample with a non-integer label is a failure row; a parquet
label column with non-integer cells gives failure rows; in each case input == written + failed."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli.precompute import main
from pipelines.latents.reader import load_latents_numpy, read_failures, read_manifest
from tests.pipelines._precompute_helpers import png_bytes, random_image, tiny_clip, tiny_vae

# End-to-end Ray Data runs with the tiny VAE and CLIP.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

S = 32


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    return tiny_vae(root / "vae"), tiny_clip(root / "clip")


def _tar(path, samples: list[tuple[str, str]]) -> bytes:
    """A WebDataset tar of (key, cls text) samples, each key.png / key.txt / key.cls; its bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i, (key, cls) in enumerate(samples):
            for ext, data in (
                ("png", png_bytes(random_image(400 + i))),
                ("txt", f"a blue square {i}".encode()),
                ("cls", cls.encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _run(out, encoders, *source: str) -> tuple[int, str]:
    vae, clip = encoders
    args = [f"output={out}", f"image_size={S}", "progress=false", f"vae.path={vae}", f"text.encoder={clip}"]
    args += ["fid=null", "compute.batch_size=4", *source]
    return main(args)


def _counts_add_up(out) -> tuple[dict, dict[str, str], list[str]]:
    m = read_manifest(str(out)).to_dict()["counts"]
    fails = {f["id"]: f["reason"] for f in read_failures(str(out)).to_pylist()}
    written = sorted(load_latents_numpy(str(out), columns=["id"])["id"].astype(str))
    assert m["input"] == m["written"] + m["failed"], m
    assert (m["written"], m["failed"]) == (len(written), len(fails)) and not set(written) & set(fails)
    assert m.pop("duplicate_ids") == len(written) - len(set(written)), m
    return m, fails, written


def test_truncated_tar_and_bad_label_counted_per_sample(tmp_path, encoders, capsys):
    wds = tmp_path / "wds"
    _tar(wds / "a.tar", [("s0", "0"), ("s1", "1"), ("s2", "cat"), ("s3", "1")])  # s2: a non-integer label
    full = _tar(tmp_path / "whole.tar", [(f"t{i}", "0") for i in range(4)])
    # Cut inside sample t2's image: t0, t1 are whole; t2 and t3 are the unread rest.
    with tarfile.open(fileobj=io.BytesIO(full)) as tf:
        t2_png = next(m for m in tf.getmembers() if m.name == "t2.png")
    (wds / "b.tar").write_bytes(full[: t2_png.offset_data + 100])
    out = tmp_path / "out"
    rc = _run(out, encoders, "source.kind=webdataset", f"source.path={wds}", "source.shuffle=false")
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0
    m, fails, written = _counts_add_up(out)
    assert written == ["a.tar/s0", "a.tar/s1", "a.tar/s3", "b.tar/t0", "b.tar/t1"]
    assert set(fails) == {"a.tar/s2", "b.tar/<unread after 2 samples>"}, fails
    assert "'cat'" in fails["a.tar/s2"] and "not an integer" in fails["a.tar/s2"]
    assert "truncated" in fails["b.tar/<unread after 2 samples>"]
    assert m == {"input": 7, "written": 5, "failed": 2}
    assert "7 input = 5 written + 2 failed" in summary, summary


def test_bad_parquet_labels_are_failure_rows(tmp_path, encoders, capsys):
    labels = ["0", "2", "abc", "2.5", "1", "1e400x"]
    table = pa.table(
        {
            "img": [png_bytes(random_image(500 + i)) for i in range(len(labels))],
            "text": [f"a small red circle {i}" for i in range(len(labels))],
            "cls": pa.array(labels, pa.string()),
            "key": [f"row{i}" for i in range(len(labels))],
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "part.parquet", row_group_size=2)
    out = tmp_path / "out"
    rc = _run(
        out,
        encoders,
        "source.kind=parquet",
        f"source.path={tmp_path / 'pq'}",
        "source.image_column=img",
        "source.caption_column=text",
        "source.label_column=cls",
        "source.id_column=key",
        "source.shuffle=false",
    )
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0
    m, fails, written = _counts_add_up(out)
    assert written == ["row0", "row1", "row4"]
    assert set(fails) == {"row2", "row3", "row5"}
    for rid, bad in (("row2", "abc"), ("row3", "2.5"), ("row5", "1e400x")):
        assert repr(bad) in fails[rid] and "'cls'" in fails[rid] and "not an integer" in fails[rid], fails[rid]
    assert m == {"input": 6, "written": 3, "failed": 3}
    assert "6 input = 3 written + 3 failed" in summary, summary
