"""Real-data fetchers (Fashion-MNIST IDX files, Noto emoji npm tarball) on small fixtures written here."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.datasets import FetchError, read_split, stratified_order
from pipelines.datasets import emoji as emoji_mod
from pipelines.datasets import fashion_mnist as fm

# ----------------------------------------------------------------------------------------------- fixtures


def _idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def _fmnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 10  # balanced, in class order (so a shuffle is visible)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels * 20  # a pixel that ties each image to its label
    return images, labels


def _write_fmnist(folder: Path, n_train: int = 40, n_test: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"train": _fmnist_arrays(n_train, 0), "test": _fmnist_arrays(n_test, 1)}
    for split, (img_name, lab_name) in fm.FILES.items():
        images, labels = data[split]
        (folder / img_name).write_bytes(gzip.compress(_idx_bytes(fm.IDX_IMAGES_MAGIC, images.shape, images.tobytes())))
        (folder / lab_name).write_bytes(gzip.compress(_idx_bytes(fm.IDX_LABELS_MAGIC, labels.shape, labels.tobytes())))
    return data


def _rows(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _leftovers(parent: Path) -> list[str]:
    """Hidden staging folders a fetch may have left beside its output."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_layout_order_and_content(tmp_path):
    src = tmp_path / "src"
    data = _write_fmnist(src)
    out = tmp_path / "fmnist"
    res = fm.fetch_fashion_mnist(str(out), source_dir=str(src), install=False, rows_per_file=15)
    assert res["splits"]["train"]["count"] == 40 and res["splits"]["test"]["count"] == 20
    assert res["splits"]["train"]["per_class"] == {c: 4 for c in fm.CLASSES}
    assert json.loads((out / "classes.json").read_text()) == list(fm.CLASSES)
    meta = json.loads((out / "metadata.json").read_text())
    assert "MIT" in meta["license"] and "dataset-fashion-mnist" in meta["source"]
    assert "Zalando" in (out / "LICENSE").read_text()
    assert [p.name for p in sorted((out / "train").iterdir())] == [f"part-0000{i}.parquet" for i in range(3)]
    schema = pq.read_schema(out / "train" / "part-00000.parquet")
    assert [(f.name, str(f.type)) for f in schema] == [
        ("id", "string"),
        ("image", "binary"),
        ("caption", "string"),
        ("label", "int32"),
    ]
    for split in ("train", "test"):
        images, labels = data[split]
        rows = _rows(out / split)
        assert len({r["id"] for r in rows}) == len(rows) == len(labels)
        for r in rows:
            i = int(r["id"].rsplit("-", 1)[1])
            assert r["id"] == f"fmnist-{split}-{i:05d}"
            assert r["label"] == labels[i] and r["caption"] == fm.CAPTIONS[labels[i]]
            img = Image.open(io.BytesIO(r["image"]))
            arr = np.asarray(img)
            # Padded 28 -> 32 with black, pixels unchanged inside.
            assert img.mode == "L" and arr.shape == (32, 32)
            assert np.array_equal(arr[2:30, 2:30], images[i]) and arr[:2].max() == 0 and arr[:, 30:].max() == 0
        order = [int(r["id"].rsplit("-", 1)[1]) for r in rows]
        assert order != sorted(order)  # shuffled
        # Stratified: every block of 10 rows holds each of the 10 balanced classes once.
        lab = [r["label"] for r in rows]
        assert all(sorted(lab[k : k + 10]) == list(range(10)) for k in range(0, len(lab), 10))
    assert res["splits"]["train"]["per_class"]["Sneaker"] == 4 and fm.CAPTIONS[7] == "a photo of a sneaker"
    assert _leftovers(tmp_path) == []


def test_fashion_mnist_seeded_order_and_sizes(tmp_path):
    src = tmp_path / "src"
    _write_fmnist(src)
    ids = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        fm.fetch_fashion_mnist(str(tmp_path / name), source_dir=str(src), install=False, seed=seed)
        ids[name] = [r["id"] for r in _rows(tmp_path / name / "train")]
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"] and sorted(ids["a"]) == sorted(ids["c"])
    fm.fetch_fashion_mnist(str(tmp_path / "orig"), source_dir=str(src), install=False, image_size=28)
    assert Image.open(io.BytesIO(_rows(tmp_path / "orig" / "test")[0]["image"])).size == (28, 28)
    with pytest.raises(ValueError, match="image_size=24"):
        fm.fetch_fashion_mnist(str(tmp_path / "small"), source_dir=str(src), install=False, image_size=24)
    # An existing non-empty output is kept unless overwrite=True, which replaces it whole.
    with pytest.raises(FileExistsError, match="not empty"):
        fm.fetch_fashion_mnist(str(tmp_path / "a"), source_dir=str(src), install=False)
    (tmp_path / "a" / "stale.txt").write_text("old")
    fm.fetch_fashion_mnist(str(tmp_path / "a"), source_dir=str(src), install=False, overwrite=True)
    assert not (tmp_path / "a" / "stale.txt").exists() and (tmp_path / "a" / "train").is_dir()


def test_read_split_matches_precompute_preprocessing(tmp_path):
    src = tmp_path / "src"
    data = _write_fmnist(src)
    fm.fetch_fashion_mnist(str(tmp_path / "o"), source_dir=str(src), install=False)
    got = read_split(tmp_path / "o" / "test", 32)
    assert got["image"].shape == (20, 32, 32, 3) and got["image"].dtype == np.uint8
    images, labels = data["test"]
    for k, rid in enumerate(got["id"]):
        i = int(rid.rsplit("-", 1)[1])
        assert got["label"][k] == labels[i]
        assert all(np.array_equal(got["image"][k, 2:30, 2:30, c], images[i]) for c in range(3))  # grey -> RGB
    with pytest.raises(ValueError, match="does not upscale"):
        read_split(tmp_path / "o" / "test", 64)


def _corrupt(src: Path, name: str, data: bytes) -> None:
    (src / name).write_bytes(data)


@pytest.mark.parametrize("case", ["magic", "truncated", "extra", "count", "gzip", "label"])
def test_fashion_mnist_bad_files_name_the_problem(tmp_path, case):
    src = tmp_path / "src"
    data = _write_fmnist(src)
    images, labels = data["train"]
    img_name, lab_name = fm.FILES["train"]
    if case == "magic":  # a labels file where the images file should be
        _corrupt(src, img_name, (src / lab_name).read_bytes())
        pattern = rf"{img_name}: wrong IDX magic number 0x00000801, expected 0x00000803"
    elif case == "truncated":
        raw = _idx_bytes(fm.IDX_IMAGES_MAGIC, images.shape, images.tobytes()[:-100])
        _corrupt(src, img_name, gzip.compress(raw))
        pattern = rf"{img_name}: truncated: dimensions \(40, 28, 28\) need 31360 data bytes, file has 31260"
    elif case == "extra":
        _corrupt(src, lab_name, gzip.compress(_idx_bytes(fm.IDX_LABELS_MAGIC, labels.shape, labels.tobytes() + b"x")))
        pattern = rf"{lab_name}: 1 unexpected bytes"
    elif case == "count":
        _corrupt(src, lab_name, gzip.compress(_idx_bytes(fm.IDX_LABELS_MAGIC, (39,), labels[:39].tobytes())))
        pattern = rf"{img_name} has 40 images but .*{lab_name} has 39 labels"
    elif case == "gzip":
        _corrupt(src, img_name, (src / img_name).read_bytes()[:500])
        pattern = rf"{img_name}: damaged gzip data"
    else:
        bad = labels.copy()
        bad[3] = 10
        _corrupt(src, lab_name, gzip.compress(_idx_bytes(fm.IDX_LABELS_MAGIC, bad.shape, bad.tobytes())))
        pattern = rf"{lab_name}: label 10 outside 0..9"
    with pytest.raises(ValueError, match=pattern):
        fm.fetch_fashion_mnist(str(tmp_path / "out"), source_dir=str(src), install=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def _fake_tool(bin_dir: Path, name: str, script: str, monkeypatch) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\n" + script + "\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def _install_tool_failures(fetch, module, tool: str, tmp_path: Path, monkeypatch, *, missing, absent, failing) -> None:
    """The failures of a fetcher that installs its files with an external `tool` (apt-get, npm), writing to
    tmp_path/o1..o3: with install=False the missing files raise FileNotFoundError matching `missing`; without the tool
    on PATH, FetchError matching `absent`; with a `tool` that fails (`failing` = (script, expected error)), FetchError
    matching that error."""
    with pytest.raises(FileNotFoundError, match=missing):
        fetch(str(tmp_path / "o1"), install=False)
    with monkeypatch.context() as m:
        m.setattr(module.shutil, "which", lambda name: None)
        with pytest.raises(FetchError, match=absent):
            fetch(str(tmp_path / "o2"))
    script, error = failing
    _fake_tool(tmp_path / "bin", tool, script, monkeypatch)
    with pytest.raises(FetchError, match=error):
        fetch(str(tmp_path / "o3"))


def test_fashion_mnist_install_paths(tmp_path, monkeypatch):
    system_dir = tmp_path / "usr-share"
    monkeypatch.setattr(fm, "DEFAULT_SOURCE_DIR", str(system_dir))
    monkeypatch.setattr(fm.os, "geteuid", lambda: 0)
    # Missing files without install: the error lists them and names the command; no apt-get at all; apt-get that fails.
    _install_tool_failures(
        fm.fetch_fashion_mnist,
        fm,
        "apt-get",
        tmp_path,
        monkeypatch,
        missing="train-images-idx3-ubyte.gz.*apt-get install -y dataset-fashion-mnist",
        absent="sudo apt-get install -y dataset-fashion-mnist",
        failing=(
            "echo 'E: Unable to locate package' >&2; exit 100",
            r"`apt-get install -y dataset-fashion-mnist` failed with exit code 100: "
            r"E: Unable to locate package\. Run `apt-get update && apt-get install",
        ),
    )
    # Not root: no attempt, the error names sudo.
    monkeypatch.setattr(fm.os, "geteuid", lambda: 1000)
    with pytest.raises(FetchError, match="needs root: run `sudo apt-get install -y dataset-fashion-mnist`"):
        fm.fetch_fashion_mnist(str(tmp_path / "o4"))
    monkeypatch.setattr(fm.os, "geteuid", lambda: 0)
    # apt-get that installs the files (here: copies the fixture into the package's folder).
    fixture = tmp_path / "fixture"
    _write_fmnist(fixture)
    _fake_tool(
        tmp_path / "bin",
        "apt-get",
        f'[ "$1 $2 $3" = "install -y dataset-fashion-mnist" ] || exit 9\n'
        f'mkdir -p "{system_dir}" && cp "{fixture}"/* "{system_dir}"/',
        monkeypatch,
    )
    res = fm.fetch_fashion_mnist(str(tmp_path / "o5"))
    assert res["splits"]["train"]["count"] == 40 and (system_dir / fm.FILES["test"][0]).is_file()
    assert [p for p in ("o1", "o2", "o3", "o4") if (tmp_path / p).exists()] == []


def test_stratified_order_spreads_unbalanced_classes():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    prefix = Counter(labels[order[:20]].tolist())
    assert prefix[0] in (15, 16, 17) and prefix[1] in (2, 3, 4) and prefix[2] == 1
    assert not np.array_equal(order, stratified_order(labels, seed=4))
    assert np.array_equal(order, stratified_order(labels, seed=3))


# ----------------------------------------------------------------------------------------------- emoji


def _emoji_png(colour: tuple[int, int, int], size: int = 64) -> bytes:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))  # transparent background, as the Noto images
    arr = np.asarray(img).copy()
    arr[16:48, 16:48] = (*colour, 255)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _entry(name, unified, category, order, short=None, img=True, **extra):
    return {
        "name": name,
        "unified": unified,
        "image": f"{unified.lower()}.png",
        "category": category,
        "sort_order": order,
        "short_names": short if short is not None else [unified.lower()],
        "has_img_google": img,
        **extra,
    }


EMOJI_ENTRIES = [
    _entry("FOX FACE", "1F98A", "Animals & Nature", 30),
    _entry("DOG FACE", "1F436", "Animals & Nature", 31),
    _entry("CAT FACE", "1F431", "Animals & Nature", 32),
    _entry(
        "WAVING HAND SIGN",
        "1F44B",
        "People & Body",
        20,
        skin_variations={
            "1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png", "has_img_google": True},
            "1F3FB": {"unified": "1F44B-1F3FB", "image": "1f44b-1f3fb.png", "has_img_google": False},
        },
    ),
    _entry("", "1F600", "Smileys & Emotion", 1, short=["grinning_face"]),
    _entry("", "1F601", "Smileys & Emotion", 2, short=[]),  # no name at all: a recorded failure
    _entry("APPLE", "1F34E", "Food & Drink", 40, img=False),  # no Google image: skipped
    _entry("PEAR", "1F350", "Food & Drink", 41),  # image file absent from the package: a recorded failure
    _entry("BANANA", "1F34C", "Food & Drink", 42),  # image bytes that do not decode: a recorded failure
    _entry("GRAPES", "1F347", "Food & Drink", 43),
]


def _write_emoji_package(path: Path, as_dir: bool = False) -> Path:
    files = {
        "package/emoji.json": json.dumps(EMOJI_ENTRIES).encode(),
        "package/package.json": json.dumps({"name": "emoji-datasource-google", "version": "16.0.0"}).encode(),
    }
    for k, name in enumerate(["1f98a", "1f436", "1f431", "1f44b", "1f44b-1f3fd", "1f600", "1f601", "1f347"]):
        files[f"package/img/google/64/{name}.png"] = _emoji_png((40 * k % 256, 200, 90))
    files["package/img/google/64/1f34c.png"] = b"\x89PNG\r\n\x1a\n broken"
    if as_dir:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path / "package"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_emoji_rows_captions_failures_and_rgba(tmp_path):
    tgz = _write_emoji_package(tmp_path / "emoji-datasource-google-16.0.0.tgz")
    out = tmp_path / "emoji"
    res = emoji_mod.fetch_emoji(str(out), str(tgz), test_fraction=0)
    classes = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink"]  # by sort_order
    assert res["classes"] == classes and json.loads((out / "classes.json").read_text()) == classes
    assert res["per_class"] == {"Smileys & Emotion": 1, "People & Body": 2, "Animals & Nature": 3, "Food & Drink": 1}
    assert res["skipped_no_image"] == 2  # APPLE and the light-skin-tone variation
    assert sorted((f["id"], f["reason"].split(" ")[0]) for f in res["failures"]) == [
        ("1F34C", "image"),
        ("1F350", "img/google/64/1f350.png"),
        ("1F601", "entry"),
    ]
    assert "neither a name nor a short name" in next(f["reason"] for f in res["failures"] if f["id"] == "1F601")
    assert json.loads((out / "metadata.json").read_text())["failures"] == res["failures"]
    assert "Apache" in (out / "LICENSE").read_text() and not (out / "test").exists()
    rows = {r["id"]: r for r in _rows(out / "train")}
    assert {k: v["caption"] for k, v in rows.items()} == {
        "1F98A": "fox face",
        "1F436": "dog face",
        "1F431": "cat face",
        "1F44B": "waving hand sign",
        "1F44B-1F3FD": "waving hand sign, medium skin tone",
        "1F600": "grinning face",
        "1F347": "grapes",
    }
    for r in rows.values():
        assert classes[r["label"]] == r["category"]
        img = Image.open(io.BytesIO(r["image"]))
        assert img.mode == "RGBA" and img.size == (64, 64)  # stored as shipped
    # As the precompute sees them: transparent pixels composited onto white.
    arrays = read_split(out / "train", 32)
    assert arrays["image"].shape == (7, 32, 32, 3) and (arrays["image"][:, 0, 0] == 255).all()
    assert (arrays["image"][:, 16, 16, 1] == 200).all()


def test_emoji_splits_keep_variations_with_their_base(tmp_path):
    pkg = _write_emoji_package(tmp_path / "unpacked", as_dir=True)  # an unpacked package folder works too
    seen = set()
    for seed in range(6):
        out = tmp_path / f"e{seed}"
        res = emoji_mod.fetch_emoji(str(out), str(pkg), test_fraction=0.5, seed=seed)
        train = {r["id"] for r in _rows(out / "train")}
        test = {r["id"] for r in _rows(out / "test")} if (out / "test").exists() else set()
        assert len(train | test) == 7 and not train & test
        assert ("1F44B" in test) == ("1F44B-1F3FD" in test)
        assert res["splits"]["train"]["count"] == len(train)
        seen.add(frozenset(test))
    assert len(seen) > 1  # the split depends on the seed


def test_emoji_npm_paths(tmp_path, monkeypatch):
    _install_tool_failures(
        emoji_mod.fetch_emoji,
        emoji_mod,
        "npm",
        tmp_path,
        monkeypatch,
        missing="npm pack emoji-datasource-google@16.0.0",
        absent="npm is not available.*`npm pack emoji-datasource-google@16.0.0`",
        failing=(
            "echo 'npm error code E404' >&2; exit 1",
            r"`npm pack emoji-datasource-google@16.0.0` failed \(exit code 1\): npm error code E404",
        ),
    )
    tgz = _write_emoji_package(tmp_path / "fixture.tgz")
    _fake_tool(
        tmp_path / "bin",
        "npm",
        f'[ "$1 $2" = "pack emoji-datasource-google@16.0.0" ] || exit 9\ncp "{tgz}" ./pkg-16.0.0.tgz',
        monkeypatch,
    )
    res = emoji_mod.fetch_emoji(str(tmp_path / "o4"))
    assert sum(res["per_class"].values()) == 7
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_emoji_bad_packages(tmp_path):
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="junk.tgz: not a readable package tarball"):
        emoji_mod.fetch_emoji(str(tmp_path / "o"), str(tmp_path / "junk.tgz"))
    pkg = _write_emoji_package(tmp_path / "p", as_dir=True)
    (pkg / "emoji.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="emoji.json must be a list of objects"):
        emoji_mod.fetch_emoji(str(tmp_path / "o"), str(pkg))
    with pytest.raises(ValueError, match="test_fraction"):
        emoji_mod.fetch_emoji(str(tmp_path / "o"), str(pkg), test_fraction=1.0)
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_package_exports_the_fetchers():
    import pipelines.datasets as ds

    assert ds.fetch_fashion_mnist is fm.fetch_fashion_mnist and ds.fetch_emoji is emoji_mod.fetch_emoji
    with pytest.raises(AttributeError, match="fetch_cifar"):
        ds.fetch_cifar  # noqa: B018 - the attribute access is what is tested
