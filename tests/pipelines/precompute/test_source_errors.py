"""Bad data a real corpus holds becomes a counted failure naming the item, or a configuration error before any work;
never a crash, a silent null label or a mangled caption. And an output that overlaps its source is refused before
anything is written or deleted."""

from __future__ import annotations

import io
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditcore.config import ConfigError, from_dict
from pipelines.cli.precompute import main
from pipelines.precompute.job import PrecomputeConfig, _prepare_output, read_dataset
from pipelines.precompute.plan import fingerprint, validate
from pipelines.sources import plan_source
from tests.pipelines._precompute_helpers import make_folder, png_bytes, random_image

S = 32


def _cfg(tmp_path, source: dict, text: bool = True, **extra) -> PrecomputeConfig:
    return from_dict(
        PrecomputeConfig,
        {
            "source": source,
            "image_size": S,
            "progress": False,
            "text": {} if text else None,
            "vae": None,
            "fid": None,
            "output": str(tmp_path / "out"),
            **extra,
        },
    )


def _rows(cfg: PrecomputeConfig) -> dict[str, dict]:
    plan = plan_source(cfg.source, S)
    return {r["id"]: r for r in read_dataset(cfg, plan, plan.shards).take_all()}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_bad_labels_captions_and_stray_images_are_failures_that_say_why(tmp_path):
    # Parquet: a negative label and one past int32 (which crashed the writer) fail; the others stand.
    (tmp_path / "pq").mkdir()
    pq.write_table(
        pa.table(
            {
                "img": [png_bytes(random_image(i)) for i in range(4)],
                "text": ["a cat", "a dog", "a cow", "   "],
                "cls": pa.array([0, -1, 2**40, 1], pa.int64()),
            }
        ),
        tmp_path / "pq" / "a.parquet",
    )
    src = {"kind": "parquet", "path": str(tmp_path / "pq"), "image_column": "img", "caption_column": "text"}
    src["label_column"] = "cls"
    rows = _rows(_cfg(tmp_path, src))
    assert rows["a.parquet:0"]["error"] == "" and rows["a.parquet:0"]["label"] == 0
    assert "label -1 in column 'cls' is outside [0, 2147483647]" in rows["a.parquet:1"]["error"]
    assert f"label {2**40}" in rows["a.parquet:2"]["error"]
    assert rows["a.parquet:3"]["error"].startswith("empty caption")  # a blank caption is not the null prompt
    assert _rows(_cfg(tmp_path, src, text=False))["a.parquet:3"]["error"] == ""  # ... unless captions are unused
    # With the class count known, a label at or past it fails instead of widening the classes.
    plan = plan_source(_cfg(tmp_path, dict(src, num_classes=1)).source, S)
    rows = _rows(_cfg(tmp_path, dict(src, num_classes=1)))
    assert plan.num_classes == 1 and rows["a.parquet:0"]["error"] == ""
    assert "label 1 in column 'cls' is not below source.num_classes=1" in rows["a.parquet:3"]["error"]

    # Folder: an image beside the class folders has no class; a Latin-1 caption is not silently mangled; an
    # upper-case IMG.PNG takes its IMG.TXT.
    root = make_folder(tmp_path / "imgs", n_per_class=1, classes=("cat", "dog"))
    (root / "stray.png").write_bytes(png_bytes(random_image(7)))
    (root / "stray.txt").write_text("a stray")
    (root / "cat" / "000.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "dog" / "LOUD.PNG").write_bytes(png_bytes(random_image(8)))
    (root / "dog" / "LOUD.TXT").write_text("a loud dog")
    rows = _rows(_cfg(tmp_path, {"kind": "folder", "path": str(root)}))
    assert "not in a class folder" in rows["stray.png"]["error"] and "cat, dog" in rows["stray.png"]["error"]
    assert "000.txt is not UTF-8" in rows["cat/000.png"]["error"]
    assert rows["dog/LOUD.PNG"]["error"] == "" and rows["dog/LOUD.PNG"]["caption"] == "a loud dog"
    assert rows["dog/000.png"]["error"] == "" and rows["dog/000.png"]["label"] == 1

    # WebDataset: a negative .cls fails like the parquet label.
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "s.tar", "w") as tf:
        for name, data in (("k.png", png_bytes(random_image(9))), ("k.txt", b"a bird"), ("k.cls", b"-3")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    rows = _rows(_cfg(tmp_path, {"kind": "webdataset", "path": str(tmp_path / "wds")}))
    assert "label -3 is outside" in rows["s.tar/k"]["error"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_corrupt_parquet_row_group_fails_its_rows_not_the_job(tmp_path):
    path = tmp_path / "pq" / "a.parquet"
    path.parent.mkdir()
    table = pa.table({"img": [png_bytes(random_image(i)) for i in range(4)], "text": [f"c{i}" for i in range(4)]})
    pq.write_table(table, path, row_group_size=2, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 64] = b"\xff" * 64  # the second row group's first page header; the footer is intact
    path.write_bytes(bytes(raw))
    src = {"kind": "parquet", "path": str(path.parent), "image_column": "img", "caption_column": "text"}
    rows = _rows(_cfg(tmp_path, dict(src, shard_size=2, shuffle=False, label_column=None)))
    assert [rows[f"a.parquet:{i}"]["error"] for i in (0, 1)] == ["", ""]
    for i in (2, 3):
        assert rows[f"a.parquet:{i}"]["error"].startswith("unreadable parquet row groups [1] of "), rows


def test_an_output_that_is_inside_or_around_the_source_is_refused_before_anything_is_written(tmp_path):
    root = make_folder(tmp_path / "imgs", n_per_class=1)
    before = sorted(p.name for p in root.rglob("*"))
    for output, words in (
        (root, "is the source folder"),
        (root / "latents", "is inside the source"),
        (tmp_path, "holds the source"),
    ):
        cfg = _cfg(tmp_path, {"kind": "folder", "path": str(root)}, output=str(output), overwrite=True)
        with pytest.raises(ConfigError, match=words):
            validate(cfg)
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written into the source, nothing deleted
    validate(_cfg(tmp_path, {"kind": "folder", "path": str(root)}, output=str(tmp_path / "elsewhere")))


def test_an_empty_source_and_a_file_name_that_is_not_utf8_are_config_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no input files under"):
        validate(_cfg(tmp_path, {"kind": "folder", "path": str(tmp_path / "empty")}))
    root = make_folder(tmp_path / "imgs", n_per_class=1)
    with open(os.fsencode(root / "cat") + b"/caf\xe9.png", "wb") as f:
        f.write(png_bytes(random_image(1)))
    with pytest.raises(ConfigError, match=r"not UTF-8 .*caf\\xe9\.png"):
        validate(_cfg(tmp_path, {"kind": "folder", "path": str(root)}))


def test_an_output_holding_rows_of_an_unknown_run_is_refused_and_dtype_is_part_of_the_fingerprint(tmp_path):
    root = make_folder(tmp_path / "imgs", n_per_class=1)
    cfg = _cfg(tmp_path, {"kind": "folder", "path": str(root)})
    plan, _ = validate(cfg)
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "part-00000.parquet").write_bytes(b"rows of another run")
    with pytest.raises(ConfigError, match="already holds data but no _progress/plan.json"):
        _prepare_output(cfg, plan)
    assert (tmp_path / "out" / "data" / "part-00000.parquet").exists()  # nothing deleted without overwrite=true
    prints = {
        d: fingerprint(_cfg(tmp_path, {"kind": "folder", "path": str(root)}, compute={"dtype": d}), plan)
        for d in ("auto", "float32", "bfloat16")
    }
    assert len(set(prints.values())) == 3
    assert prints["auto"] == fingerprint(cfg, plan)  # runs that never set a dtype keep their fingerprint
    # "auto" is float32 on CPU but bf16 / fp16 on a GPU: a resume that moves between them would mix precisions.
    on_gpu = [{"gpus_per_actor": 1}, {"device": "cuda"}, {"device": "cuda:0", "gpus_per_actor": 1}]
    gpu_prints = {fingerprint(_cfg(tmp_path, {"kind": "folder", "path": str(root)}, compute=c), plan) for c in on_gpu}
    assert len(gpu_prints) == 1 and gpu_prints.isdisjoint(prints.values())
    cpu = _cfg(tmp_path, {"kind": "folder", "path": str(root)}, compute={"device": "cpu", "gpus_per_actor": 1})
    assert fingerprint(cpu, plan) == prints["auto"]


def test_source_limit_of_a_webdataset_is_met_by_reading_or_refused_by_precompute(tmp_path):
    from pipelines.datasets.images import load_source_images
    from tests.pipelines._precompute_helpers import make_tar

    make_tar(tmp_path / "wds" / "shard-000.tar", 0, 3)
    make_tar(tmp_path / "wds" / "shard-001.tar", 3, 3)
    src = {"kind": "webdataset", "path": str(tmp_path / "wds"), "shuffle": False}
    from pipelines.sources import SourceConfig

    got = load_source_images(SourceConfig(**src), S, limit=4)
    assert got["id"] == [f"shard-000.tar/sample{i:04d}" for i in range(3)] + ["shard-001.tar/sample0003"]
    assert len(load_source_images(SourceConfig(**src), S)["id"]) == 6
    with pytest.raises(ConfigError, match=r"source.limit=4 cannot apply to a WebDataset precompute"):
        validate(_cfg(tmp_path, dict(src, limit=4)))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_run_where_every_input_failed_exits_non_zero(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    for i in range(2):
        (tmp_path / "src" / f"x{i}.png").write_bytes(b"not an image")
    argv = [f"output={tmp_path / 'out'}", f"image_size={S}", "progress=false", "vae=null", "fid=null", "text=null"]
    rc = main(argv + ["source.kind=folder", f"source.path={tmp_path / 'src'}", "source.labels_from_dirs=false"])
    captured = capsys.readouterr()
    assert rc == 1 and "2 input = 0 written + 2 failed" in captured.out
    assert "every one of the 2 inputs failed" in captured.err and "failures.parquet" in captured.err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_repeated_ids_and_inputs_left_out_for_their_names_are_counted_and_named(tmp_path, capsys):
    import json

    src = tmp_path / "pq"
    src.mkdir()
    table = pa.table({"img": [png_bytes(random_image(i)) for i in range(4)], "key": ["a", "b", "a", "c"]})
    pq.write_table(table, src / "part-0.parquet")
    pq.write_table(table.slice(0, 1), src / "_held_back.parquet")  # '_' names are skipped like hidden files ...
    (src / "_SUCCESS").write_bytes(b"")  # ... which is right for Spark's markers
    argv = [f"output={tmp_path / 'out'}", f"image_size={S}", "progress=false", "vae=null", "fid=null", "text=null"]
    argv += ["source.kind=parquet", f"source.path={src}", "source.image_column=img", "source.id_column=key"]
    assert main(argv + ["source.caption_column=null", "source.label_column=null"]) == 0
    err = capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"input": 4, "written": 4, "failed": 0, "duplicate_ids": 1}
    assert manifest["source"]["duplicate_id_examples"] == ["a"]
    assert "1 written rows repeat the id of an earlier row (e.g. ['a'])" in err
    assert manifest["source"]["skipped_files"] == 2
    assert manifest["source"]["skipped_inputs"] == {"count": 1, "examples": ["_held_back.parquet"]}
    assert "1 inputs were left out because a part of their path starts with '.' or '_'" in err
    assert "_held_back.parquet" in err and "_SUCCESS" not in err


def test_binary_parquet_captions_and_ids_are_read_as_text_and_other_types_fail_their_row(tmp_path):
    from pipelines.sources import SourceConfig, read_shard

    img = png_bytes(random_image(1))
    table = pa.table(
        {
            "image": pa.array([img] * 4, pa.binary()),
            "caption": pa.array([b"a photo of a cat", b"caf\xe9", b"a dog", b"a bird"], pa.binary()),
            "key": pa.array([b"img-1", b"img-2", b"\xff", b"img-4"], pa.binary()),
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "a.parquet")
    src = SourceConfig(kind="parquet", path=str(tmp_path / "pq"), id_column="key", label_column=None, shuffle=False)
    plan = plan_source(src, S)
    rows = read_shard(plan.shards[0], src, None)
    assert list(rows["id"][[0, 1, 3]]) == ["img-1", "img-2", "img-4"]
    assert rows["caption"][0] == "a photo of a cat" and rows["error"][0] == ""
    assert "caption in column 'caption' is not UTF-8 text" in rows["error"][1]
    assert rows["id"][2] == "a.parquet:2" and "id in column 'key' is not UTF-8 text" in rows["error"][2]
    # A caption column of numbers is not text either: the row fails and says what it holds.
    pq.write_table(table.set_column(1, "caption", pa.array([1, 2, 3, 4])), tmp_path / "pq" / "a.parquet")
    rows = read_shard(plan_source(src, S).shards[0], src, None)
    assert rows["error"][0] == "caption in column 'caption' is int 1, not text"
    assert [e.startswith("caption in column 'caption' is int") for e in rows["error"]] == [True, True, False, True]


def test_a_photo_with_exif_orientation_is_decoded_upright_as_it_displays():
    import numpy as np
    from PIL import Image

    from pipelines.precompute.encode import _decode_one

    # Stored landscape (left half red, right half blue) with Orientation 6: displayed rotated 90 degrees clockwise,
    # a portrait whose top half is red and bottom half blue.
    a = np.zeros((S, 2 * S, 3), np.uint8)
    a[:, :S] = (255, 0, 0)
    a[:, S:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", exif=exif.tobytes())
    crop, reason = _decode_one(buf.getvalue(), S)
    assert reason == "" and crop.shape == (S, S, 3)
    assert tuple(crop[0, 0]) == (255, 0, 0) and tuple(crop[0, -1]) == (255, 0, 0)  # top row: red across
    assert tuple(crop[-1, 0]) == (0, 0, 255) and tuple(crop[-1, -1]) == (0, 0, 255)  # bottom row: blue across


def test_a_photo_whose_exif_block_is_malformed_decodes_as_stored_and_never_fails_the_job():
    # ImageOps.exif_transpose writes the EXIF block back and raised struct.error on these three bytes, which escaped
    # the row's decode and failed the whole Ray task (and every command reading the images).
    import numpy as np
    from PIL import Image

    from pipelines.precompute.encode import _decode_one

    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x8769] = 6, "cam", {0x9003: "2020:01:01 00:00:00"}
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, "JPEG", exif=exif)
    data = bytearray(buf.getvalue())
    assert data[24:28] == b"Exif"
    data[41], data[51], data[72] = 33, 192, 79  # three bytes of the EXIF entries, found by fuzzing
    with Image.open(io.BytesIO(bytes(data))) as im:
        im.load()  # a readable image
    crop, reason = _decode_one(bytes(data), S)
    assert reason == "" and crop.shape == (S, S, 3)


def test_overwrite_deletes_only_a_latent_data_set_and_settings_are_checked_before_ray(tmp_path, monkeypatch):
    """overwrite=true deleted whatever `output` named: the working directory (output=.), or a whole outputs/
    folder of sweeps and MLflow stores. Only a latent data set (or a started run) may be replaced; the built-in
    set's spec and the compute resources are checked here, not first inside Ray tasks."""
    work = tmp_path / "work"
    (work / "outputs" / "sweeps").mkdir(parents=True)
    (work / "outputs" / "mlflow.db").write_text("store")
    monkeypatch.chdir(work)
    builtin = {"kind": "builtin", "count": 8}
    for output, words in (
        (".", "give the latent data set's own directory"),
        (str(tmp_path), "is the working directory or holds it"),
        ("outputs", r"holds mlflow.db, sweeps, not a latent data set"),
    ):
        cfg = _cfg(tmp_path, builtin, output=output, overwrite=True)
        with pytest.raises(ConfigError, match=words):
            validate(cfg)
        with pytest.raises(ConfigError, match=words):  # the job's own delete checks again
            _prepare_output(cfg, plan_source(cfg.source, S))
    assert (work / "outputs" / "mlflow.db").read_text() == "store" and (work / "outputs" / "sweeps").is_dir()
    # A manifest.json is a common name: the shipped encoders' folder holds one, and was taken for a data set.
    (work / "enc" / "vae").mkdir(parents=True)
    (work / "enc" / "manifest.json").write_text('{"vae": {"sha256": "ab"}, "features": {}}')
    with pytest.raises(ConfigError, match="holds a manifest.json that is not a latent data set's"):
        validate(_cfg(tmp_path, builtin, output="enc", overwrite=True))
    assert (work / "enc" / "vae").is_dir()
    with pytest.raises(ConfigError, match="s3://bkt/ is a bucket, not a folder in one"):  # named before any request
        validate(_cfg(tmp_path, builtin, output="s3://bkt/", overwrite=True))
    # A latent data set (here: a run that started one) is replaced as before; so is an empty directory.
    (work / "outputs" / "lat" / "_progress").mkdir(parents=True)
    (work / "outputs" / "lat" / "_progress" / "plan.json").write_text("{}")
    (work / "outputs" / "empty").mkdir()
    for output in ("outputs/lat", "outputs/empty", "outputs/new"):
        validate(_cfg(tmp_path, builtin, output=output, overwrite=True))
    # Values the built-in renderer or Ray would refuse later are named now.
    for source, words in (
        ({**builtin, "max_objects": 0}, r"source: max_objects must be an integer in \[1"),
        ({**builtin, "seed": -1}, r"source: seed must be an integer in \[0"),
        ({**builtin, "count": 0}, "source.count: 0 leaves the built-in set without images"),
    ):
        with pytest.raises(ConfigError, match=words):
            validate(_cfg(tmp_path, source, output="outputs/x"))
    for key, value, words in (
        ("cpus_per_actor", -1, "compute.cpus_per_actor must be a finite number >= 0, got -1"),
        ("gpus_per_actor", -1, "compute.gpus_per_actor must be a finite number >= 0, got -1"),
        ("decode_cpus", 0, "compute.decode_cpus must be a finite number > 0, got 0"),
        ("num_cpus", 0, "compute.num_cpus must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=words):
            _cfg(tmp_path, builtin, compute={key: value})
    with pytest.raises(ConfigError, match="limit must be >= 1"):
        _cfg(tmp_path, {**builtin, "limit": -1})
    assert _cfg(tmp_path, builtin, compute={"cpus_per_actor": 0}).compute.cpus_per_actor == 0  # Ray's num_cpus=0


def test_a_refused_run_leaves_nothing_that_makes_a_folder_of_other_files_replaceable(tmp_path, monkeypatch):
    """validate()'s write probe went in output/_progress/ and left that folder behind on local disk; a run refused
    for the folder's contents ("already holds data ...; use a new output path or overwrite=true") then read as a
    started run, and following the advice deleted the folder, MLflow store and all."""
    work = tmp_path / "work"
    (work / "outputs" / "data").mkdir(parents=True)
    (work / "outputs" / "mlflow.db").write_text("store")
    monkeypatch.chdir(work)
    cfg = _cfg(tmp_path, {"kind": "builtin", "count": 8}, output="outputs")
    plan, _ = validate(cfg)
    with pytest.raises(ConfigError, match="already holds data but no _progress/plan.json"):
        _prepare_output(cfg, plan)
    assert sorted(os.listdir(work / "outputs")) == ["data", "mlflow.db"]  # the probe left nothing behind
    (work / "outputs" / "_progress").mkdir()  # nor does a bare _progress/ (no plan.json) mark a started run
    over = _cfg(tmp_path, {"kind": "builtin", "count": 8}, output="outputs", overwrite=True)
    for check in (lambda: validate(over), lambda: _prepare_output(over, plan)):
        with pytest.raises(ConfigError, match=r"holds data, mlflow.db, not a latent data set"):
            check()
    assert (work / "outputs" / "mlflow.db").read_text() == "store"


def test_a_row_without_a_label_fails_in_a_class_conditional_set_and_training_refuses_one(tmp_path):
    """A missing label cell (or .cls member) was stored as null and counted as written; it read back as label -1
    and the class embedding failed on it in the middle of training ("index out of range in self")."""
    import json

    import numpy as np

    from pipelines.precompute.job import _read_and_decode

    (tmp_path / "pq").mkdir()
    table = pa.table(
        {"image": [png_bytes(random_image(i)) for i in range(3)], "label": pa.array([0, None, 1], pa.int64())}
    )
    pq.write_table(table, tmp_path / "pq" / "a.parquet")
    for text, missing in ((False, "missing label"), (True, "")):
        cfg = _cfg(tmp_path, {"kind": "parquet", "path": str(tmp_path / "pq"), "shuffle": False}, text=text)
        plan = plan_source(cfg.source, S)
        assert plan.has_labels
        kwargs = {
            "require_captions": False,  # the rows have no captions: only the label rule is under test
            "require_labels": cfg.text is None and plan.has_labels,
        }
        (rows,) = _read_and_decode(
            {"desc": [json.dumps(plan.shards[0])]}, cfg.source, plan.classes, S, chunk_rows=64, **kwargs
        )
        assert list(rows["label"]) == [0, -1, 1]
        assert rows["error"][0] == rows["error"][2] == ""
        assert rows["error"][1].startswith(missing)  # with text the label is extra: a null one is no failure
    # A data set written before holds such rows: training names them instead of failing inside the embedding.
    from jobs.train.data import check_labels

    with pytest.raises(ConfigError, match=r"1 of 3 training rows have no class label .*\['b'\]"):
        check_labels({"id": np.array(["a", "b", "c"], object), "label": np.array([0, -1, 1], np.int32)}, "m.json")
    check_labels({"id": np.array(["a"], object), "label": np.array([0], np.int32)}, "m.json")


def test_a_caption_of_only_a_byte_order_mark_or_zero_width_characters_is_blank():
    """Notepad's empty UTF-8 file is a BOM; the tokenizer drops it and zero-width characters, so such a caption
    was written as the unconditional (empty) prompt while the blank-caption check passed it."""
    from pipelines.sources import _caption
    from pipelines.validation import is_blank_prompt

    assert _caption(b"\xef\xbb\xbfa red circle\n", "file x.txt") == ("a red circle", None)
    for text in ("", "  \n\t", "\ufeff", "\u200b\ufeff ", "\u200d\u00a0", "\x00"):
        assert is_blank_prompt(text), repr(text)
    for text in ("a", " a ", "\u200ba", "0", "\u00e9"):
        assert not is_blank_prompt(text), repr(text)
    # The text encoder agrees: such a caption tokenizes to the empty prompt's ids.
    from pipelines.encoders.text import load_text_encoder

    tok = load_text_encoder("minilm").tokenizer
    assert tok("\ufeff\u200b")["input_ids"] == tok("")["input_ids"]


@pytest.mark.parametrize("mode,key,grey", [("RGB", (0, 0, 0), (90, 90, 90)), ("L", 0, 90), ("I;16", 0, 90 * 257)])
def test_a_colour_key_transparency_is_composited_on_white_like_an_alpha_channel(mode, key, grey):
    """A PNG's tRNS colour key on an RGB, grayscale or 16-bit grayscale image was dropped: its transparent pixels
    kept the keyed colour (black here) where alpha and palette transparency come out white. The real-data reader
    decodes the same way."""
    import numpy as np
    from PIL import Image

    from pipelines.imaging import display_rgb
    from pipelines.precompute.encode import _decode_one

    img = Image.new(mode, (S, S), key)
    for x in range(S // 2, S):  # right half opaque grey
        for y in range(S):
            img.putpixel((x, y), grey)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=key)
    crop, reason = _decode_one(buf.getvalue(), S)
    assert reason == ""
    assert tuple(crop[S // 2, 2]) == (255, 255, 255)  # the keyed (transparent) half: white
    assert tuple(crop[S // 2, -3]) == (90, 90, 90)  # opaque pixels keep their colour
    with Image.open(io.BytesIO(buf.getvalue())) as again:
        assert np.array_equal(np.asarray(display_rgb(again)), crop)  # crop is the identity at this size


def test_a_16_bit_colour_key_on_an_image_read_as_8_bit_is_matched_not_an_overflow():
    """Pillow reads a 16-bit RGB PNG's pixels as 8-bit but keeps its tRNS key in 16 bits: comparing the two raised
    OverflowError, which failed the whole decode batch."""
    from PIL import Image

    from pipelines.precompute.encode import _decode_one

    img = Image.new("RGB", (S, S), (255, 0, 0))
    img.putpixel((S - 1, S - 1), (0, 0, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=(65535, 0, 0))
    crop, reason = _decode_one(buf.getvalue(), S)
    assert reason == "" and tuple(crop[0, 0]) == (255, 255, 255) and tuple(crop[-1, -1]) == (0, 0, 255)


def test_folder_classes_are_folders_of_images_and_an_unreadable_caption_is_named(tmp_path):
    from pipelines.sources import SourceConfig, read_shard

    root = make_folder(tmp_path / "imgs", n_per_class=2, classes=("cat", "dog"))
    (root / "annotations").mkdir()
    (root / "annotations" / "boxes.xml").write_text("<boxes/>")  # no image: it was class 0, shifting cat and dog
    src = SourceConfig(kind="folder", path=str(root), shard_size=100, shuffle=False)
    plan = plan_source(src, S)
    assert plan.classes == ["cat", "dog"] and plan.num_classes == 2
    # A caption file that exists but cannot be read (here a folder of that name) fails the row naming it; it was
    # taken for "no caption".
    (root / "dog" / "001.txt").unlink()
    (root / "dog" / "001.txt").mkdir()
    rows = read_shard(plan.shards[0], src, plan.classes)
    by_id = dict(zip(rows["id"], rows["error"]))
    assert [int(x) for x in rows["label"][1:]] == [0, 0, 1, 1]  # cat 0, dog 1
    assert by_id["dog/001.png"].startswith("unreadable caption file 001.txt:"), by_id["dog/001.png"]
    assert by_id["cat/000.png"] == "" and by_id["dog/000.png"] == ""
    assert by_id["annotations/boxes.xml"].startswith("not in a class folder")


def test_webdataset_caption_and_label_keys_match_members_in_any_case(tmp_path):
    from pipelines.sources import SourceConfig, read_shard
    from tests.pipelines._precompute_helpers import make_tar

    make_tar(tmp_path / "wds" / "a.tar", 0, 2)  # members sample0000.png / .txt / .cls
    for keys in ({}, {"caption_key": "TXT", "label_key": "CLS"}):
        src = SourceConfig(kind="webdataset", path=str(tmp_path / "wds"), **keys)
        rows = read_shard(plan_source(src, S).shards[0], src, None)
        assert list(rows["caption"]) == ["a blue square 0", "a blue square 1"], keys
        assert list(rows["label"]) == [0, 1] and list(rows["error"]) == ["", ""], keys


def test_folders_of_images_under_other_extensions_stay_classes(tmp_path):
    from pipelines.sources import SourceConfig

    root = tmp_path / "imgs"
    for cls, name in (("faces", "a.pgm"), ("photos", "b.jfif"), ("zcats", "c.png"), ("meta", "d.csv")):
        (root / cls).mkdir(parents=True)
        (root / cls / name).write_bytes(b"x")
    assert plan_source(SourceConfig(kind="folder", path=str(root)), S).classes == ["faces", "photos", "zcats"]
