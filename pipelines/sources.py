"""Input sources for precompute: image folders, parquet with image bytes, WebDataset tars, the built-in set.

Every source is split on the driver into a deterministic list of *shards* (index ranges, sorted file
chunks, parquet row groups, one tar each) before any work starts. A shard is the unit of resumption:
the same config always yields the same shards with the same ids in the same order, so a rerun can
skip shards that are already committed and a killed run restarts to exactly the same result.

`read_shard(desc)` runs inside Ray tasks and turns one shard descriptor into rows. It never raises
for bad data: an unreadable file becomes a row whose `error` column says why, so that
`input == written + failed` holds for every run. Files are read through pyarrow filesystems
(`pipelines.storage.get_fs`), so local paths and s3:// behave the same; the filesystem object is
pickled into the Ray tasks, which therefore do not depend on the workers' environment.
"""

from __future__ import annotations

import itertools
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.infra import storage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
# Sidecar files that describe an image rather than being one; never counted as inputs of a folder.
SIDECAR_EXTENSIONS = ("txt", "json", "cls", "md5")
# Files that are never images: a top-level folder holding only these is not a class (annotations/, metadata/).
NOT_IMAGE_EXTENSIONS = ("xml", "csv", "tsv", "yaml", "yml", "md", "html", "pdf", "npy", "npz", "pkl", "pt", "py")
MAX_LABEL = 2**31 - 1  # labels are stored as int32

SourceKind = Literal["builtin", "folder", "parquet", "webdataset"]


@dataclass
class SourceConfig:
    """Where the images (and captions/labels) come from; fields not used by `kind` are ignored."""

    kind: SourceKind = "builtin"
    path: str | None = None  # folder / parquet / webdataset root: local path or s3:// URI
    shard_size: int = 256  # items per shard (builtin, folder, parquet); a WebDataset shard is one tar
    # keep only the first `limit` items (builtin: count; others: of the shuffled order). WebDataset: in
    # load_source_images (train-vae, train-features) only; precompute refuses it (a tar's count is known once read).
    limit: int | None = None
    # Shard a seeded shuffled order of the inputs (files / parquet row groups / tars), so every shard and every
    # `limit` prefix mixes the classes of a class-sorted folder (ImageNet-style) instead of holding one or two.
    shuffle: bool = True
    seed: int = 0  # the shuffle seed (and the built-in set's seed)
    # built-in synthetic set
    count: int = 1024
    max_objects: int = 2
    # image folders: `root/<class>/<name>.<ext>`, caption in `<name>.txt` beside the image
    caption_extension: str = "txt"
    labels_from_dirs: bool = True
    extensions: list[str] | None = None  # None: every non-sidecar file is an input (non-images -> failures)
    # parquet with image bytes
    image_column: str = "image"
    caption_column: str | None = "caption"
    label_column: str | None = "label"
    id_column: str | None = None
    # parquet / WebDataset labels: the class count, when known; a label at or past it is a failure. None: the
    # largest label seen + 1 (one stray label then sets it)
    num_classes: int | None = None
    # WebDataset tars: samples grouped by key, one member per extension
    image_keys: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    caption_key: str = "txt"
    label_key: str = "cls"

    def __post_init__(self) -> None:
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.kind == "builtin" and self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.kind != "builtin" and not self.path:
            raise ValueError(f"source.path is required for source.kind={self.kind!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or null: every item), got {self.limit}")
        if self.num_classes is not None and not 1 <= self.num_classes <= MAX_LABEL + 1:
            raise ValueError(f"num_classes must be in [1, 2^31], got {self.num_classes}")


class SourceError(ValueError):
    """The source configuration points at something that does not exist or cannot be read."""


@dataclass
class SourcePlan:
    """The deterministic shard list of a source plus what the manifest needs to know about it."""

    shards: list[dict[str, Any]]
    description: dict[str, Any]
    classes: list[str] | None = None
    num_classes: int | None = None
    has_labels: bool = False

    @property
    def num_items(self) -> int | None:
        """Total items when known before reading (all kinds but WebDataset)."""
        counts = [s.get("count") for s in self.shards]
        return None if any(c is None for c in counts) else int(sum(counts))


def _ext(name: str) -> str:
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def _list_files(uri: str, skipped: list[str] | None = None) -> list[str]:
    """Sorted paths (relative to `uri`, '/'-separated) of all regular files below `uri`, except those under a name
    starting with '.' or '_' (hidden files, Spark/Hadoop markers such as `_SUCCESS`), which go to `skipped`."""
    fs, root = storage.get_fs(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"source path does not exist: {uri}")
    if info.type == pafs.FileType.File:
        return [""]
    rels = []
    try:
        for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            if i.type != pafs.FileType.File:
                continue
            rel = posixpath.relpath(i.path.replace("\\", "/"), root.replace("\\", "/"))
            if any(part.startswith((".", "_")) for part in rel.split("/")):
                if skipped is not None:
                    skipped.append(rel)
                continue
            rels.append(rel)
    except UnicodeDecodeError as exc:  # pyarrow decodes each path as UTF-8
        around = exc.object[max(0, exc.start - 40) : exc.end + 40] if isinstance(exc.object, bytes) else b""
        raise SourceError(
            f"{uri}: a file name under it is not UTF-8 ({around!r}); rename it (e.g. `convmv -f latin1 -t utf8`)"
        ) from exc
    return sorted(rels)


def _skipped_record(skipped: list[str], readable) -> dict[str, Any]:
    """The description's record of files left out for their names: `skipped_files` (how many), and
    `skipped_inputs`, those of them the source would otherwise have read (`readable(rel)`), a few named."""
    if not skipped:
        return {}
    inputs = sorted(r for r in skipped if readable(r))
    return {
        "skipped_files": len(skipped),
        **({"skipped_inputs": {"count": len(inputs), "examples": inputs[:5]}} if inputs else {}),
    }


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _shuffled(items: list, cfg: SourceConfig) -> list:
    """`items` in the seeded shuffled order (source.shuffle), else as listed (sorted)."""
    if not cfg.shuffle:
        return list(items)
    return [items[i] for i in np.random.default_rng(cfg.seed).permutation(len(items))]


def _apply_limit(shards: list[dict[str, Any]], limit: int | None, key: str) -> list[dict[str, Any]]:
    """Cut a shard list after `limit` items (shards keep their ids, so a smaller limit is a prefix)."""
    if limit is None:
        return shards
    out, left = [], limit
    for s in shards:
        if left <= 0:
            break
        if s["count"] > left:
            s = dict(s)
            s[key] = s[key][:left] if isinstance(s[key], list) else s[key]
            s["count"] = left
        out.append(s)
        left -= s["count"]
    return out


def plan_source(cfg: SourceConfig, image_size: int) -> SourcePlan:
    """Enumerate the input of `cfg` into deterministic shards (driver side; lists files, reads no images)."""
    if cfg.kind == "builtin":
        return _plan_builtin(cfg, image_size)
    if cfg.kind == "folder":
        return _plan_folder(cfg)
    if cfg.kind == "parquet":
        return _plan_parquet(cfg)
    if cfg.kind == "webdataset":
        return _plan_webdataset(cfg)
    raise SourceError(f"unknown source.kind {cfg.kind!r}")


def _plan_builtin(cfg: SourceConfig, image_size: int) -> SourcePlan:
    from ditcore.data import builtin

    count = cfg.count if cfg.limit is None else min(cfg.count, cfg.limit)
    # Validate the spec once here so a bad size fails before any Ray work.
    if not builtin.MIN_IMAGE_SIZE <= image_size <= builtin.MAX_IMAGE_SIZE:
        raise SourceError(
            f"image_size={image_size}: the built-in set renders {builtin.MIN_IMAGE_SIZE}..{builtin.MAX_IMAGE_SIZE} px"
        )
    spec = {"image_size": image_size, "max_objects": cfg.max_objects, "seed": cfg.seed}
    try:
        builtin.BuiltinSpec(**spec)  # here, not first in a Ray read task
    except ValueError as e:
        raise SourceError(str(e)) from None
    shards = [
        {
            "shard": i,
            "kind": "builtin",
            "start": start,
            "stop": min(start + cfg.shard_size, count),
            "count": min(start + cfg.shard_size, count) - start,
            "spec": spec,
        }
        for i, start in enumerate(range(0, count, cfg.shard_size))
    ]
    return SourcePlan(
        shards=shards,
        description={"kind": "builtin", "count": count, **spec},
        classes=list(builtin.CLASS_NAMES),
        num_classes=builtin.NUM_CLASSES,
        has_labels=True,
    )


def _plan_folder(cfg: SourceConfig) -> SourcePlan:
    assert cfg.path
    skipped: list[str] = []
    rels = _list_files(cfg.path, skipped)
    cap_ext = cfg.caption_extension.lower().lstrip(".")
    allowed = [e.lower().lstrip(".") for e in cfg.extensions] if cfg.extensions else None

    inputs = []
    for rel in rels:
        ext = _ext(rel)
        if ext == cap_ext or ext in SIDECAR_EXTENSIONS:
            continue
        if allowed is not None and ext not in allowed:
            continue
        inputs.append(rel)

    def is_image(rel: str) -> bool:  # a skipped file worth a warning: one this source would read as an image
        return _ext(rel) in (allowed if allowed is not None else IMAGE_EXTENSIONS) and _ext(rel) != cap_ext

    classes = None
    if cfg.labels_from_dirs:
        # A class is a top-level folder with a file that may be an image (any extension but the known non-image
        # ones: .pgm or .jfif faces are images): one of annotations only (boxes.xml) is not, which shifted every later
        # class's index and took a share of the class-conditional FID samples.
        dirs = sorted({r.split("/", 1)[0] for r in inputs if "/" in r and _ext(r) not in NOT_IMAGE_EXTENSIONS})
        classes = dirs or None
    inputs = _shuffled(inputs, cfg)
    shards = [
        {"shard": i, "kind": "folder", "root": cfg.path, "files": chunk, "count": len(chunk)}
        for i, chunk in enumerate(_chunks(inputs, cfg.shard_size))
    ]
    shards = _apply_limit(shards, cfg.limit, "files")
    return SourcePlan(
        shards=shards,
        description={
            "kind": "folder",
            "path": cfg.path,
            "files": sum(s["count"] for s in shards),
            "caption_extension": cap_ext,
            **_skipped_record(skipped, is_image),
        },
        classes=classes,
        num_classes=len(classes) if classes else None,
        has_labels=bool(classes),
    )


def _plan_parquet(cfg: SourceConfig) -> SourcePlan:
    assert cfg.path
    skipped: list[str] = []
    rels = [r for r in _list_files(cfg.path, skipped) if r == "" or _ext(r) == "parquet"]
    if not rels:
        raise SourceError(f"no .parquet files under {cfg.path}")
    fs, root = storage.get_fs(cfg.path)
    shards: list[dict[str, Any]] = []
    has_labels = False
    for rel in rels:
        path = root if rel == "" else posixpath.join(root, rel)
        try:
            pf = pq.ParquetFile(fs.open_input_file(path))
            meta, schema = pf.metadata, pf.schema_arrow
        except Exception as exc:  # a broken file is a configuration problem: the planner cannot count its rows
            raise SourceError(f"cannot read parquet metadata of {path}: {exc}") from exc
        # Image and id columns must exist; caption/label columns are optional per file (absent -> no caption/label).
        has_labels = has_labels or (cfg.label_column is not None and cfg.label_column in schema.names)
        for col in [cfg.image_column, cfg.id_column]:
            if col is not None and col not in schema.names:
                raise SourceError(f"{path}: column {col!r} not found (columns: {', '.join(schema.names)})")
        # Group whole row groups into shards of about shard_size rows: each shard reads only its row groups.
        group, rows, first_row = [], 0, 0
        last = meta.num_row_groups - 1
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            group.append(rg)
            rows += n
            if rows >= cfg.shard_size or rg == last:  # the last row group closes the file's last shard
                shards.append(
                    {
                        "shard": len(shards),
                        "kind": "parquet",
                        "root": cfg.path,
                        "file": rel,
                        "row_groups": group,
                        "first_row": first_row,
                        "count": rows,
                    }
                )
                first_row += rows
                group, rows = [], 0
    shards = [dict(s, shard=i) for i, s in enumerate(_shuffled(shards, cfg))]
    if cfg.limit is not None:
        out, left = [], cfg.limit
        for s in shards:
            if left <= 0:
                break
            s = dict(s, take=min(s["count"], left))
            s["count"] = s["take"]
            left -= s["count"]
            out.append(s)
        shards = out
    return SourcePlan(
        shards=shards,
        description={
            "kind": "parquet",
            "path": cfg.path,
            "files": len(rels),
            "image_column": cfg.image_column,
            "caption_column": cfg.caption_column,
            "label_column": cfg.label_column,
            **_skipped_record(skipped, lambda r: _ext(r) == "parquet"),
        },
        has_labels=has_labels,
        num_classes=cfg.num_classes if has_labels else None,
    )


def _plan_webdataset(cfg: SourceConfig) -> SourcePlan:
    assert cfg.path
    skipped: list[str] = []
    rels = [r for r in _list_files(cfg.path, skipped) if r == "" or _ext(r) == "tar"]
    if not rels:
        raise SourceError(f"no .tar files under {cfg.path}")
    # The sample count of a tar is only known once it is read, so a WebDataset shard is one tar file.
    shards = [
        {"shard": i, "kind": "webdataset", "root": cfg.path, "file": rel, "count": None}
        for i, rel in enumerate(_shuffled(rels, cfg))
    ]
    return SourcePlan(
        shards=shards,
        description={
            "kind": "webdataset",
            "path": cfg.path,
            "tars": len(rels),
            **_skipped_record(skipped, lambda r: _ext(r) == "tar"),
        },
        has_labels=True,
        num_classes=cfg.num_classes,
    )


# ----------------------------------------------------------------------------- reading (inside Ray tasks)


def _rows(desc: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Column batch for one shard; `shard_total` lets the driver know when a shard is complete."""
    n = len(records)
    return {
        "id": np.array([r["id"] for r in records], dtype=object),
        "shard": np.full(n, desc["shard"], dtype=np.int64),
        "order": np.arange(n, dtype=np.int64),
        "shard_total": np.full(n, n, dtype=np.int64),
        "source": np.array([r["source"] for r in records], dtype=object),
        "data": np.array([r.get("data", b"") for r in records], dtype=object),
        "caption": np.array([r.get("caption") or "" for r in records], dtype=object),
        "has_caption": np.array([r.get("caption") is not None for r in records], dtype=bool),
        "label": np.array([-1 if r.get("label") is None else int(r["label"]) for r in records], dtype=np.int64),
        "error": np.array([r.get("error", "") for r in records], dtype=object),
    }


def read_shard(
    desc: dict[str, Any], cfg: SourceConfig, classes: list[str] | None, filesystem: pafs.FileSystem | None = None
) -> dict[str, np.ndarray]:
    """All rows of one shard: raw image bytes (or rendered pixels for builtin) plus caption/label/error.

    `filesystem` is the driver's pyarrow filesystem for the source root (pickled into the task), so S3
    endpoint and credentials need not be configured on the workers; None resolves it here.
    """
    kind = desc["kind"]
    if kind == "builtin":
        return _read_builtin(desc)
    if kind == "folder":
        records = _read_folder(desc, cfg, classes, filesystem)
    elif kind == "parquet":
        records = _read_parquet(desc, cfg, filesystem)
    elif kind == "webdataset":
        # `take`: the samples wanted of this tar (a `limit` met part-way through it); None: all.
        records = list(itertools.islice(iter_webdataset(desc, cfg, filesystem), desc.get("take")))
    else:
        raise SourceError(f"unknown shard kind {kind!r}")
    return _rows(desc, records)


def _read_builtin(desc: dict[str, Any]) -> dict[str, np.ndarray]:
    from ditcore.data.builtin import BuiltinSpec, render_batch

    spec = BuiltinSpec(**desc["spec"])
    batch = render_batch(desc["start"], desc["stop"], spec)
    n = len(batch["id"])
    records = [
        {
            "id": str(batch["id"][i]),
            "source": f"builtin:{desc['start'] + i}",
            "caption": str(batch["caption"][i]),
            "label": int(batch["label"][i]),
        }
        for i in range(n)
    ]
    out = _rows(desc, records)
    out["image"] = batch["image"]  # already [N,S,S,3] uint8 at the target size: no decode needed
    return out


def _absent(fs: pafs.FileSystem, path: str) -> bool:
    """Whether `path` does not exist (a store whose missing-file error is a plain OSError); False when unsure."""
    try:
        return fs.get_file_info(path).type == pafs.FileType.NotFound
    except OSError:
        return False


def _read_file(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _fs(root_uri: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is None:
        return storage.get_fs(root_uri)
    if storage.is_s3(root_uri):
        return filesystem, root_uri[len("s3://") :].rstrip("/")
    return filesystem, storage.get_fs(root_uri)[1]


def _read_folder(
    desc: dict[str, Any], cfg: SourceConfig, classes: list[str] | None, filesystem: pafs.FileSystem | None = None
) -> list[dict[str, Any]]:
    fs, root = _fs(desc["root"], filesystem)
    class_index = {c: i for i, c in enumerate(classes or [])}
    cap_ext = cfg.caption_extension.lower().lstrip(".")
    records = []
    for rel in desc["files"]:
        path = posixpath.join(root, rel) if rel else root
        rec: dict[str, Any] = {
            "id": rel or posixpath.basename(root),
            "source": storage.join(desc["root"], rel) if rel else desc["root"],
        }
        if class_index:
            rec["label"] = class_index.get(rel.split("/", 1)[0]) if "/" in rel else None
            if rec["label"] is None:
                rec["error"] = (
                    f"not in a class folder (labels_from_dirs: the classes are the top-level folders "
                    f"{', '.join(classes or [])}); move it into one, or set source.labels_from_dirs=false"
                )
                records.append(rec)
                continue
        try:
            rec["data"] = _read_file(fs, path)
        except Exception as exc:  # a vanished or unreadable file is a per-item failure, not a crash
            rec["error"] = f"unreadable file: {exc}"
            records.append(rec)
            continue
        stem = path.rsplit(".", 1)[0] if "." in posixpath.basename(path) else path
        rec["caption"] = None
        shouting = posixpath.basename(path).rsplit(".", 1)[-1].isupper()  # IMG.PNG + IMG.TXT (skipped as sidecar)
        for cap_path in [f"{stem}.{cap_ext}"] + ([f"{stem}.{cap_ext.upper()}"] if shouting else []):
            try:
                caption_bytes = _read_file(fs, cap_path)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) or _absent(fs, cap_path):
                    continue  # no caption file: a row without a caption
                # a caption file that is there but cannot be read: the row fails naming it (it was "no caption")
                rec["error"] = f"unreadable caption file {posixpath.basename(cap_path)}: {exc}"
                break
            rec["caption"], error = _caption(caption_bytes, f"file {posixpath.basename(cap_path)}")
            if error:
                rec["error"] = error
            break
        records.append(rec)
    return records


def _image_bytes(value: Any) -> bytes | None:
    """Image bytes from a parquet cell: binary, or a Hugging Face `{"bytes": ..., "path": ...}` struct."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        b = value.get("bytes")
        return bytes(b) if b is not None else None
    raise TypeError(f"image cell of type {type(value).__name__} is not bytes")


def _int_label(value: Any) -> int | None:
    """An integer class label from a cell (ints, integral floats, digit strings); None when it is not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def _label_error(raw: Any, label: int | None, where: str, num_classes: int | None) -> str | None:
    """Why a label cell is unusable (not an integer, negative, past int32 or `num_classes`), or None when it is fine
    or absent."""
    if raw is None:
        return None
    if label is None:
        return f"label {raw!r}{where} is not an integer"
    if not 0 <= label <= MAX_LABEL:
        return f"label {label}{where} is outside [0, {MAX_LABEL}]"
    if num_classes is not None and label >= num_classes:
        return f"label {label}{where} is not below source.num_classes={num_classes}"
    return None


def _caption(data: bytes, where: str) -> tuple[str | None, str | None]:
    """(caption, error) of a caption file's bytes, which must be UTF-8 text (a blank one is judged where captions
    are encoded: it fails only a text-conditioned data set)."""
    try:
        return data.decode("utf-8-sig").strip(), None  # -sig: a leading byte-order mark is not caption text
    except UnicodeDecodeError as exc:
        return None, f"caption {where} is not UTF-8 text ({exc.reason} at byte {exc.start})"


def _read_parquet(
    desc: dict[str, Any], cfg: SourceConfig, filesystem: pafs.FileSystem | None = None
) -> list[dict[str, Any]]:
    fs, root = _fs(desc["root"], filesystem)
    rel = desc["file"]
    path = root if rel == "" else posixpath.join(root, rel)
    src = storage.join(desc["root"], rel) if rel else desc["root"]

    def row_id(row: int) -> str:  # a row's id without source.id_column (or where its value is null)
        return f"{rel or posixpath.basename(root)}:{row}"

    try:
        pf = pq.ParquetFile(fs.open_input_file(path))
        names = pf.schema_arrow.names
        wanted = (cfg.image_column, cfg.caption_column, cfg.label_column, cfg.id_column)
        columns = [c for c in wanted if c and c in names]
        table = pf.read_row_groups(desc["row_groups"], columns=columns)
    except Exception as exc:  # noqa: BLE001 - a corrupt page fails its rows, not the job
        first, count = desc["first_row"], desc["count"]
        return [
            {
                "id": row_id(first + i),
                "source": f"{src}#row={first + i}",
                "error": f"unreadable parquet row groups {desc['row_groups']} of {src}: {exc}",
            }
            for i in range(count)
        ]
    if "take" in desc:
        table = table.slice(0, desc["take"])
    data = table.to_pydict()
    n = table.num_rows
    records = []
    for i in range(n):
        row = desc["first_row"] + i
        rid = data[cfg.id_column][i] if cfg.id_column and cfg.id_column in data else row_id(row)
        bad_id = None
        if isinstance(rid, (bytes, bytearray)):  # a binary id column: its text, not the repr "b'...'"
            try:
                rid = bytes(rid).decode("utf-8")
            except UnicodeDecodeError as exc:
                bad_id = f"id in column {cfg.id_column!r} is not UTF-8 text ({exc.reason} at byte {exc.start})"
                rid = None
        rec: dict[str, Any] = {"id": str(rid), "source": f"{src}#row={row}"}
        if rid is None:
            rec.update(id=row_id(row), error=bad_id or f"null id in column {cfg.id_column!r}")
        try:
            b = _image_bytes(data[cfg.image_column][i]) if cfg.image_column in data else None
            if b is None:
                rec["error"] = f"missing image bytes in column {cfg.image_column!r}"
            else:
                rec["data"] = b
        except TypeError as exc:
            rec["error"] = str(exc)
        if cfg.caption_column and cfg.caption_column in data:
            cap = data[cfg.caption_column][i]
            if isinstance(cap, (bytes, bytearray)):  # a binary column: UTF-8 text like a caption file's bytes
                cap, error = _caption(bytes(cap), f"in column {cfg.caption_column!r}")
                if error:
                    rec["error"] = rec.get("error") or error
            elif cap is not None and not isinstance(cap, str):
                rec["error"] = rec.get("error") or (
                    f"caption in column {cfg.caption_column!r} is {type(cap).__name__} {cap!r:.60}, not text"
                )
                cap = None
            rec["caption"] = cap
        if cfg.label_column and cfg.label_column in data:
            lab = data[cfg.label_column][i]
            label = _int_label(lab)
            error = _label_error(lab, label, f" in column {cfg.label_column!r}", cfg.num_classes)
            if error:
                rec["error"] = rec.get("error") or error
            rec["label"] = label if error is None else None
        records.append(rec)
    return records


def _wds_record(tar_id: str, src: str, key: str, parts: dict[str, bytes], cfg: SourceConfig) -> dict[str, Any]:
    """One WebDataset sample (its members by extension) as a record; problems become its error."""
    image_keys = [k.lower() for k in cfg.image_keys]
    rec: dict[str, Any] = {"id": f"{tar_id}/{key}", "source": f"{src}#{key}"}
    img_ext = next((e for e in image_keys if e in parts), None)
    if img_ext is None:
        rec["error"] = (
            f"sample has no image member (looked for {', '.join(image_keys)}; found {', '.join(sorted(parts))})"
        )
    else:
        rec["data"] = parts[img_ext]
    caption_key, label_key = cfg.caption_key.lower(), cfg.label_key.lower()  # members' extensions are lowercased
    if caption_key in parts:
        rec["caption"], error = _caption(parts[caption_key], f"member .{caption_key}")
        if error:
            rec["error"] = rec.get("error") or error
    if label_key in parts:
        raw = parts[label_key].decode("utf-8", errors="replace").strip()
        label = _int_label(raw)
        error = _label_error(raw[:20], label, "", cfg.num_classes)
        if error:
            rec["error"] = rec.get("error") or error
        rec["label"] = label if error is None else None
    return rec


def iter_webdataset(
    desc: dict[str, Any], cfg: SourceConfig, filesystem: pafs.FileSystem | None = None
) -> Iterator[dict[str, Any]]:
    """The samples of one tar, streamed member by member (the tar is never held in memory whole).

    WebDataset keeps a sample's members contiguous, so a sample is complete when the key changes. A tar that breaks
    off (truncated or corrupt) ends with one failure record for its unread remainder, after every sample read before.
    """
    fs, root = _fs(desc["root"], filesystem)
    rel = desc["file"]
    path = root if rel == "" else posixpath.join(root, rel)
    src = storage.join(desc["root"], rel) if rel else desc["root"]
    tar_id = rel or posixpath.basename(root)
    key, parts, n = None, {}, 0
    try:
        with fs.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tf:
            for member in tf:
                base = posixpath.basename(member.name)
                if not member.isfile() or base.startswith(".") or "." not in base:
                    continue
                # WebDataset convention: the key is the path up to the first dot of the file name.
                k = posixpath.join(posixpath.dirname(member.name), base.split(".", 1)[0])
                if key is not None and k != key:
                    yield _wds_record(tar_id, src, key, parts, cfg)
                    n, parts = n + 1, {}
                key = k
                f = tf.extractfile(member)
                parts[base.split(".", 1)[1].lower()] = f.read() if f is not None else b""
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt tar: the samples read so far stand
        yield {
            "id": f"{tar_id}/<unread after {n} samples>",
            "source": src,
            "error": f"unreadable or truncated tar: the members after sample {n} could not be read: {exc}",
        }
        return
    if key is not None:
        yield _wds_record(tar_id, src, key, parts, cfg)


def iter_shard_chunks(
    desc: dict[str, Any],
    cfg: SourceConfig,
    classes: list[str] | None,
    filesystem: pafs.FileSystem | None,
    chunk_rows: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The rows of one shard in chunks of at most `chunk_rows` (order / shard_total set; -1 until the last chunk).

    A WebDataset tar is streamed, so only one chunk of its samples is in memory at a time; other kinds are read
    whole (a shard is at most shard_size items) and cut.
    """
    if desc["kind"] == "webdataset":
        records_iter: Any = iter_webdataset(desc, cfg, filesystem)
    else:
        full = read_shard(desc, cfg, classes, filesystem)
        n = len(full["id"])
        for start in range(0, max(n, 1), chunk_rows):
            chunk = {k: v[start : start + chunk_rows] for k, v in full.items()}
            chunk["order"] = np.arange(start, start + len(chunk["id"]), dtype=np.int64)
            chunk["shard_total"] = np.full(len(chunk["id"]), n if start + chunk_rows >= n else -1, dtype=np.int64)
            yield chunk
        return
    buf: list[dict[str, Any]] = []
    first = 0
    for rec in records_iter:
        if len(buf) == chunk_rows:  # emit only once the next record exists: the last chunk is never empty
            yield _chunk(desc, buf, first, total=-1)
            first, buf = first + len(buf), []
        buf.append(rec)
    yield _chunk(desc, buf, first, total=first + len(buf))


def _chunk(desc: dict[str, Any], records: list[dict[str, Any]], first: int, total: int) -> dict[str, np.ndarray]:
    chunk = _rows(desc, records)
    chunk["order"] += first
    chunk["shard_total"][:] = total
    return chunk
