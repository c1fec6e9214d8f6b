"""Quickstart modes: the built-in grid can show a law (>= 4 sizes, >= 1.5 decades, decayed points, FID with more
samples than feature dimensions); `--data` picks class or text conditioning from what the data has."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.quickstart.modes import make_data_mode, make_mode
from jobs.sweep.driver import load_sweep_config
from pipelines.infra.config_files import REPO_ROOT


def test_full_grid_can_show_a_law():
    mode = make_mode(tiny=False)
    cfg = load_sweep_config(str(REPO_ROOT / mode.sweep_yaml), mode.sweep)
    assert len(cfg.models) >= 4
    assert math.log10(max(cfg.budgets) / min(cfg.budgets)) >= 1.5
    assert cfg.mode == "wsd" and cfg.base["eval"]["fractions"] == []  # only decayed points
    assert cfg.base["eval"]["num_samples"] >= 288  # the built-in feature net's dimension
    assert cfg.base["eval"]["guidance"] > 1.0


def test_built_in_grids_train_without_mirroring_and_ask_for_captions_of_the_grammar():
    import itertools

    from ditcore.data.builtin import COLOUR_NAMES, POSITIONS, SHAPES, SIZES, describe_object

    for tiny in (False, True):
        mode = make_mode(tiny=tiny)
        cfg = load_sweep_config(str(REPO_ROOT / mode.sweep_yaml), mode.sweep)
        assert cfg.base["data"]["flip"] == 0  # the captions name left and right
    # The real sets keep DiT's mirroring (a mirrored garment keeps its class).
    real = make_data_mode("fashion-mnist")
    assert load_sweep_config(str(REPO_ROOT / real.sweep_yaml), real.sweep).base["data"]["flip"] == 0.5
    phrases = {
        describe_object({"size": a, "colour": b, "shape": c, "position": d})
        for a, b, c, d in itertools.product(
            range(len(SIZES)), range(len(COLOUR_NAMES)), range(len(SHAPES)), range(len(POSITIONS))
        )
    }
    for prompt in make_mode(tiny=False).prompts:
        parts = prompt.replace(" and ", ", ").split(", ")
        assert all(part in phrases for part in parts), prompt


def test_data_modes_choose_conditioning(tmp_path):
    assert make_data_mode("fashion-mnist").data.conditioning == "class"
    assert make_data_mode("emoji").data.conditioning == "text"
    folder = tmp_path / "imgs" / "train"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "0.png").write_bytes(b"")
    # Folders the precompute does not read as classes (hidden, '_', empty) are not counted: the grids and served
    # labels asked for classes the model did not have, and the serve stage failed after the whole sweep.
    for junk in (".ipynb_checkpoints", "__MACOSX", "empty"):
        (folder / junk).mkdir()
    (folder / ".ipynb_checkpoints" / "x.png").write_bytes(b"")
    (folder / "__MACOSX" / "x.png").write_bytes(b"")
    # No test split beside it: named up front (the standard FID's floor needs one; it failed after the sweep).
    with pytest.raises(ValueError, match="no test split beside it"):
        make_data_mode(str(folder))
    (tmp_path / "imgs" / "test").mkdir()
    mode = make_data_mode(str(folder))
    spec = mode.data
    assert (spec.conditioning, spec.source_kind, spec.num_classes) == ("class", "folder", 2)
    assert mode.labels == [0, 1]
    assert spec.name == "imgs" and mode.name == "imgs"  # named by the folder holding the splits, not "train"
    pq_dir = tmp_path / "pq" / "train"
    pq_dir.mkdir(parents=True)
    (tmp_path / "pq" / "test").mkdir()
    pq.write_table(pa.table({"image": [b""], "caption": ["a cat"]}), pq_dir / "part-0.parquet")
    # Captions only: PATH trains class-conditional models scored by a classifier of the labels (a text PATH used
    # to get the class precompute config and emoji's prompts, and failed at the classifier stage).
    with pytest.raises(ValueError, match="no class labels"):
        make_data_mode(str(pq_dir))
    pq.write_table(pa.table({"image": [b"", b""], "label": np.array([1, 3])}), pq_dir / "part-0.parquet")
    mode = make_data_mode(str(pq_dir))
    assert (mode.data.conditioning, mode.data.source_kind, mode.data.num_classes) == ("class", "parquet", 4)
    assert mode.labels == [0, 1, 2, 3]  # the sample grid asks only for classes the model has (it asked for 0..9)
    # Digit-string labels read as the precompute reads them (a TypeError traceback before); a file without the
    # column is named (a pyarrow schema dump before); a label that is no class index is named.
    pq.write_table(pa.table({"image": [b"", b""], "label": ["0", "5"]}), pq_dir / "part-0.parquet")
    assert make_data_mode(str(pq_dir)).data.num_classes == 6
    pq.write_table(pa.table({"image": [b""], "caption": ["a cat"]}), pq_dir / "part-1.parquet")
    with pytest.raises(ValueError, match="part-1.parquet has no `label` column"):
        make_data_mode(str(pq_dir))
    pq.write_table(pa.table({"image": [b""], "label": ["cat"]}), pq_dir / "part-1.parquet")
    with pytest.raises(ValueError, match="part-1.parquet: label 'cat' is not a class index"):
        make_data_mode(str(pq_dir))
    (pq_dir / "part-1.parquet").unlink()
    # A `data fetch` folder stands for its train/ split; a file that is not parquet is named.
    assert make_data_mode(str(tmp_path / "imgs")).data.path == str(folder)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="a file; give a folder holding train/ and test/"):
        make_data_mode(str(tmp_path / "notes.txt"))


def test_unknown_data_names_the_value(tmp_path):
    with pytest.raises(ValueError, match="no-such-set"):
        make_data_mode(str(tmp_path / "no-such-set"))


def test_real_data_grids_keep_the_settings_they_were_measured_with():
    """The built-in grid scores raw weights at batch 32, lr 4e-3; the real-data grids (measured before) keep EMA,
    batch 64 and lr 2e-3."""
    built_in = make_mode(tiny=False)
    base = load_sweep_config(str(REPO_ROOT / built_in.sweep_yaml), built_in.sweep).base
    assert (base["optim"]["ema_decay"], base["data"]["batch_size"], base["optim"]["lr"]) == (0.0, 32, 0.004)
    for data in ("fashion-mnist", "emoji"):
        real = make_data_mode(data)
        base = load_sweep_config(str(REPO_ROOT / real.sweep_yaml), real.sweep).base
        got = (base["optim"]["ema_decay"], base["data"]["batch_size"], base["data"]["flip"], base["optim"]["lr"])
        assert got == (0.999, 64, 0.5, 0.002)


def test_an_edit_of_the_train_config_the_sweep_starts_from_reruns_the_sweep_stage(tmp_path, monkeypatch):
    """The sweep stage's hash covers configs/train/tiny.yaml's content, not only its path."""
    from jobs.quickstart.runner import Context, config_hash
    from jobs.quickstart.stages import scaling

    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(scaling.TRAIN_YAML.read_text())
    monkeypatch.setattr(scaling, "TRAIN_YAML", train_yaml)
    ctx = Context(tmp_path / "qs", make_mode(tiny=False), 0.0)
    ctx.results["precompute"] = {"path": str(tmp_path / "latents")}
    before = config_hash(scaling.sweep_config(ctx))
    assert config_hash(scaling.sweep_config(ctx)) == before  # the same files, the same hash
    assert "weight_decay: 0.0\n" in train_yaml.read_text()  # a key the sweep YAML does not set
    train_yaml.write_text(train_yaml.read_text().replace("weight_decay: 0.0\n", "weight_decay: 0.05\n"))
    assert config_hash(scaling.sweep_config(ctx)) != before


def test_a_data_path_whose_images_change_reruns_the_stages_after_it(tmp_path):
    """The data stage of `--data PATH` hashed only the path: after the images changed, a rerun reused the
    classifier, VAE, precompute, sweep and standard FID made from the old ones."""
    import time

    from PIL import Image

    from jobs.quickstart.runner import Context, run_stages
    from jobs.quickstart.stages import stage_list

    def write(n: int, value: int) -> None:
        for split in ("train", "test"):
            for c in ("a", "b"):
                d = tmp_path / "data" / split / c
                d.mkdir(parents=True, exist_ok=True)
                for f in d.iterdir():
                    f.unlink()
                for i in range(n):
                    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(d / f"{i}.png")

    def data_stage_hash() -> str:
        mode = make_data_mode(str(tmp_path / "data"))
        ctx = Context(tmp_path / "out", mode, time.monotonic())
        run_stages(ctx, stage_list(mode)[:1], force=False)
        return ctx.hashes["data"]

    write(4, 0)
    (tmp_path / "data" / "test" / "caf\udce9.png").write_bytes(b"")  # a name that is not UTF-8 (a traceback)
    first = data_stage_hash()
    assert data_stage_hash() == first  # nothing changed: reused
    write(6, 255)  # other images in the same folders
    assert data_stage_hash() != first


def test_a_train_split_that_is_a_link_keeps_its_test_split_beside_it(tmp_path):
    """`--data ds/train` with train/ a link to a big disk: resolving the link lost the test/ beside it."""
    disk = tmp_path / "bigdisk" / "fashion_train_v3"
    for cls in ("a", "b"):
        (disk / cls).mkdir(parents=True)
        (disk / cls / "0.png").write_bytes(b"")
    (tmp_path / "ds" / "test").mkdir(parents=True)
    (tmp_path / "ds" / "train").symlink_to(disk, target_is_directory=True)
    for given in ("ds/train", "ds"):
        spec = make_data_mode(str(tmp_path / given)).data
        assert (spec.name, spec.path, spec.num_classes) == ("ds", str(tmp_path / "ds" / "train"), 2)
    # A user folder named like a built-in data set gets its own sweep folder and experiment.
    (tmp_path / "emoji").symlink_to(tmp_path / "ds", target_is_directory=True)
    assert make_data_mode(str(tmp_path / "emoji")).name == "emoji-data"
