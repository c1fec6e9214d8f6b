"""Storage URIs behave the same for local paths and s3:// on a real local S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.infra import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_bytes_json_listing_and_dirs(root, tmp_path):
    storage.makedirs(root)
    storage.write_bytes(storage.join(root, "a.bin"), b"\x00\x01")
    storage.write_json(storage.join(root, "sub", "m.json"), {"k": [1, 2]})
    assert storage.read_bytes(storage.join(root, "a.bin")) == b"\x00\x01"
    assert storage.read_json(storage.join(root, "sub", "m.json")) == {"k": [1, 2]}
    assert storage.exists(storage.join(root, "a.bin"))
    assert not storage.exists(storage.join(root, "missing.bin"))
    assert storage.listdir(root) == ["a.bin", "sub"]
    assert storage.listdir(storage.join(root, "nope")) == []

    src = tmp_path / "tree"
    (src / "x").mkdir(parents=True)
    (src / "x" / "f.txt").write_text("hello")
    storage.upload_dir(str(src), storage.join(root, "tree"))
    back = storage.download_dir(storage.join(root, "tree"), str(tmp_path / "back"))
    assert (tmp_path / "back" / "x" / "f.txt").read_text() == "hello" and back == str(tmp_path / "back")
    storage.delete(storage.join(root, "tree"))
    assert not storage.exists(storage.join(root, "tree", "x", "f.txt"))


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path):
    target = tmp_path / "d" / "f.json"
    storage.write_json(str(target), {"a": 1})
    storage.write_json(str(target), {"a": 2})
    assert storage.read_json(str(target)) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_a_file_that_is_not_json_is_named(tmp_path):
    """A corrupt manifest.json (or state.json) used to be a bare 'Expecting value: line 1 column 1'."""
    import json

    from pipelines.latents.manifest import Manifest

    data = tmp_path / "latents"
    data.mkdir()
    (data / "manifest.json").write_text('{"schema_version": 1, ')
    with pytest.raises(json.JSONDecodeError, match=rf"{data / 'manifest.json'}: not valid JSON: Expecting"):
        Manifest.read(str(data))
    (data / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=r"manifest.json: not valid JSON \(not UTF-8 text: invalid start byte"):
        Manifest.read(str(data))


def test_a_scheme_other_than_s3_is_refused_where_storage_is_touched(tmp_path):
    from ditcore.config import ConfigError

    for uri in ("gs://bucket/x", "S3://bucket/x", "s3:/bucket/x", "hdfs://nn/x"):
        for call in (storage.exists, storage.local_copy, lambda u: storage.check_location(u, "output")):
            with pytest.raises(ConfigError, match="has the scheme"):
                call(uri)
    for fine in (str(tmp_path / "a:b"), "relative/dir", "s3://bucket/x"):
        storage.check_location(fine, "output")


def test_publish_dir_swaps_a_local_directory_and_clears_an_s3_prefix(tmp_path, s3_bucket):
    """publish_dir deleted the old local directory before renaming the new one in (a crash between left neither),
    and uploaded into an S3 prefix over its old objects (a crash mid-upload mixed old and new files)."""
    out = tmp_path / "vae"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def fails(d):
        (d / "new.txt").write_text("new")
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError):
        storage.publish_dir(str(out), fails)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # a failed write leaves the old directory whole
    assert storage.publish_dir(str(out), lambda d: (d / "new.txt").write_text("new")) == str(out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    uri = f"{s3_bucket}/vae"
    storage.write_bytes(f"{uri}/stale.safetensors", b"old weights")
    storage.publish_dir(uri, lambda d: (d / "config.json").write_text("{}"))
    assert storage.listdir(uri) == ["config.json"]


def test_an_s3_output_is_checked_like_a_local_one_before_its_prefix_is_cleared(s3_bucket):
    """An S3 publish deletes the prefix before its upload, and the checks that guard a local folder returned early
    for s3://: `out=s3://bkt/shared` deleted everything under shared/, `out=s3://bkt` emptied the bucket."""
    other = f"{s3_bucket}/shared/keep.parquet"
    storage.write_bytes(other, b"someone's data")
    for out, words in ((s3_bucket, "is a bucket, not a folder"), (f"{s3_bucket}/shared", "S3 folder with other")):
        with pytest.raises(ValueError, match=words):
            storage.check_output_dir(out, kind="VAE", replaces=("config.json", "w.safetensors"))
    with pytest.raises(ValueError, match="is a bucket, not a folder"):
        storage.publish_dir(s3_bucket + "/", lambda d: (d / "config.json").write_text("{}"))
    assert storage.read_bytes(other) == b"someone's data"
    # An earlier output of the same kind, or an empty folder, may be replaced.
    storage.write_bytes(f"{s3_bucket}/vae/config.json", b"{}")
    storage.write_bytes(f"{s3_bucket}/vae/w.safetensors", b"old")
    for out in (f"{s3_bucket}/vae", f"{s3_bucket}/new"):
        storage.check_output_dir(out, kind="VAE", replaces=("config.json", "w.safetensors"))


def test_publish_through_a_symlink_replaces_its_target_and_a_failed_write_leaves_no_temp_file(tmp_path):
    """A symlinked output folder: the link was moved aside and a new folder put in its place, so the folder it
    pointed to kept the old files and a hidden link was left behind. A write that raises left its temp file."""
    target = tmp_path / "disk" / "vae"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    (tmp_path / "vae").symlink_to(target)
    assert storage.publish_dir(str(tmp_path / "vae"), lambda d: (d / "new.txt").write_text("new")) == str(
        tmp_path / "vae"
    )  # the path given, as recorded and printed
    assert (tmp_path / "vae").is_symlink() and [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "vae"]
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["vae"]
    with pytest.raises(TypeError):
        storage.write_bytes(str(tmp_path / "r.json"), "text, not bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "vae"]


def _downloads(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("ditscale-"))


def test_remote_checkpoints_read_in_a_scope_leave_no_download(tmp_path, s3_bucket, monkeypatch):
    """Every read of an s3:// checkpoint (a pipeline load, a config read, a worker's restore or init_from) downloaded
    it into a fresh temp folder that was never removed: evaluation, run after run, filled the disk."""
    import tempfile

    from ditcore.checkpoint import CheckpointError
    from pipelines.generation import GenerationPipeline
    from tests.serve._helpers import class_checkpoint

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    ckpt = class_checkpoint(tmp_path)
    remote = f"{s3_bucket}/ckpt"
    storage.upload_dir(ckpt, remote)
    with storage.local_copy_scope(remote) as local:
        assert (Path(local) / "config.json").is_file() and _downloads(temp)
    assert _downloads(temp) == []
    with storage.local_copy_scope(ckpt) as local:  # a local checkpoint is read in place and left
        assert local == ckpt
    assert (Path(ckpt) / "config.json").is_file()
    pipe = GenerationPipeline.from_checkpoint(remote, text_encoder=False)
    assert pipe.checkpoint_uri == remote and _downloads(temp) == []
    # The config alone: no weights are fetched (a checkpoint without them still answers), and none is named.
    storage.write_bytes(f"{s3_bucket}/bare/config.json", storage.read_bytes(f"{remote}/config.json"))
    assert (
        storage.checkpoint_config(f"{s3_bucket}/bare")["model"] == storage.read_json(f"{remote}/config.json")["model"]
    )
    assert _downloads(temp) == []
    with pytest.raises(CheckpointError, match=f"{s3_bucket}/nothing: checkpoint directory does not exist"):
        storage.checkpoint_config(f"{s3_bucket}/nothing")
