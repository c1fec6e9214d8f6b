"""Storage URIs: a local path or `s3://bucket/key`, through pyarrow filesystems.

S3 endpoints, region and credentials come from the standard AWS environment variables
(AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), so the same code talks to AWS, MinIO or a local moto server.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow.fs as pafs

from ditcore.config import ConfigError


def is_s3(uri: str) -> bool:
    """True for `s3://` URIs."""
    return str(uri).startswith("s3://")


def refuse_remote(path: Any, flag: str, what: str) -> None:
    """ValueError for an output that must be a local path but is a URI: `Path("s3://b/x")` is the local folder
    `s3:/b/x`, so such an output was written beside the working directory while the command reported success."""
    if "://" in str(path):
        raise ValueError(f"{flag} {str(path)!r}: must be a local path ({what} is written there); copy it afterwards")


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")


def is_bucket_root(uri: str) -> bool:
    """Whether an s3:// URI names a whole bucket (`s3://bkt`, `s3://bkt/`) rather than a folder in one."""
    return is_s3(uri) and "/" not in str(uri)[len("s3://") :].strip("/")


def check_location(uri: str, key: str = "path") -> None:
    """ConfigError naming `key` when `uri` has a scheme other than s3:// (gs://, S3://, s3:/...): it would
    otherwise be taken for a local folder named `gs:`."""
    m = _SCHEME.match(str(uri))
    if m and not is_s3(uri):
        raise ConfigError(
            f"{key}: {uri!r} has the scheme {m.group(1)!r}; ditscale reads and writes local paths and s3:// URIs only"
        )


def overlap(source: str, output: str) -> str | None:
    """How `output` sits against `source`: "same", "inside" (output under source), "contains" (source under
    output) or None when they are apart. Local paths are compared resolved (symlinks, `~`, `..`), s3:// as text."""

    def location(uri: str) -> str:
        uri = str(uri)
        return uri.rstrip("/") if is_s3(uri) else str(Path(uri).expanduser().resolve())

    src, out = location(source), location(output)
    if out == src:
        return "same"
    if out.startswith(src.rstrip("/") + "/"):
        return "inside"
    if src.startswith(out.rstrip("/") + "/"):
        return "contains"
    return None


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the AWS environment variables (custom endpoint included)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, Any] = {"region": region}
    if endpoint:
        scheme = "https" if endpoint.startswith("https") else "http"
        kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
        kwargs["scheme"] = scheme
        kwargs["allow_bucket_creation"] = True
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def get_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    check_location(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return "/".join([uri.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    """Whether a file or directory exists at `uri`."""
    fs, path = get_fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    """Whether `uri` is a directory (or an S3 prefix holding objects)."""
    fs, path = get_fs(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def listdir(uri: str) -> list[str]:
    """Names (not paths) of the entries directly under `uri`; empty when it does not exist."""
    fs, path = get_fs(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def read_bytes(uri: str) -> bytes:
    """Whole content of the file at `uri`."""
    fs, path = get_fs(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri`; local writes are atomic (temp file + rename)."""
    if is_s3(uri):
        fs, path = get_fs(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    path = Path(uri).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an interrupt leaves no stray temp file beside the outputs
        raise


def read_json(uri: str) -> Any:
    """Parse the JSON file at `uri`; a file that is not JSON is a ValueError naming it."""
    data = read_bytes(uri)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{uri}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:  # the same type, with the file named: JSON's own message says only where
        raise json.JSONDecodeError(f"{uri}: not valid JSON: {exc.msg}", exc.doc, exc.pos) from exc


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float as None, so its JSON is standard (no NaN / Infinity tokens)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(uri: str, obj: Any) -> None:
    """Write `obj` as indented JSON to `uri` (atomic locally)."""
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def tree_stamp(*uris: str) -> str | None:
    """A short hash of what the local files under `uris` are (relative path, size, modification time; names that
    start with '.' left out): it changes when a file is added, removed, replaced or rewritten. None when a uri is
    remote (s3://: not listed here)."""
    import hashlib

    h = hashlib.sha1()
    for uri in uris:
        if is_s3(uri):
            return None
        root = Path(uri).expanduser()
        h.update(f"{root}\0".encode("utf-8", "surrogateescape"))  # any file name (the listing names odd ones)
        if root.is_file():
            st = root.stat()
            h.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # as the source listing reads them
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                h.update(
                    f"{os.path.relpath(full, root)}\0{st.st_size} {st.st_mtime_ns}\n".encode("utf-8", "surrogateescape")
                )
    return h.hexdigest()[:12]


def makedirs(uri: str) -> None:
    """Create a directory (no-op on S3, where prefixes need no creation)."""
    if not is_s3(uri):
        Path(uri).expanduser().mkdir(parents=True, exist_ok=True)


def delete(uri: str) -> None:
    """Remove a file or a directory tree if it exists."""
    fs, path = get_fs(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local directory tree to `uri` (local or s3://)."""
    if not is_s3(uri):
        dst = Path(uri).expanduser()
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(local_dir, dst)
        return
    fs, path = get_fs(uri)
    pafs.copy_files(
        os.path.abspath(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


def download_dir(uri: str, local_dir: str) -> str:
    """Copy the tree at `uri` into `local_dir` (created); returns `local_dir`."""
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    fs, path = get_fs(uri)
    pafs.copy_files(
        path, os.path.abspath(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return local_dir


def local_copy(uri: str, cache_root: str | None = None) -> str:
    """A local directory with the content of `uri`: the path itself when local, else a fresh download."""
    if not is_s3(uri):
        check_location(uri)
        return os.path.abspath(os.path.expanduser(uri))
    root = cache_root or tempfile.mkdtemp(prefix="ditscale-")
    return download_dir(uri, os.path.join(root, uri.rstrip("/").rsplit("/", 1)[-1]))


@contextlib.contextmanager
def local_copy_scope(uri: str) -> Iterator[str]:
    """`local_copy(uri)` for a with-block: a download (s3://) is deleted when the block ends (a worker reading one
    checkpoint after another filled its temp folder otherwise); a local path is used in place, left as it is."""
    if not is_s3(uri):
        yield local_copy(uri)
        return
    root = tempfile.mkdtemp(prefix="ditscale-")
    try:
        yield local_copy(uri, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def checkpoint_config(uri: str) -> dict:
    """config.json of the checkpoint directory at `uri` (local or s3://); of a remote one only that file is read,
    not its weights."""
    from ditcore.checkpoint import CheckpointError, read_checkpoint_config

    if not is_s3(uri):
        return read_checkpoint_config(local_copy(uri))
    config = join(uri, "config.json")
    if not exists(config):
        raise CheckpointError(f"{uri}: checkpoint directory does not exist (no config.json there)")
    with tempfile.TemporaryDirectory(prefix="ditscale-") as tmp:
        Path(tmp, "config.json").write_bytes(read_bytes(config))
        return read_checkpoint_config(tmp)


def refuse_working_dir(out: str, kind: str) -> None:
    """ValueError when `out`, a directory about to be replaced or emptied, is empty, '.' or '..', or (local) the
    working directory or a folder holding it."""
    text = str(out).strip()
    if text in ("", ".", ".."):
        raise ValueError(f"out {out!r}: give the {kind}'s own directory (it is replaced whole)")
    if not is_s3(text):
        cwd = Path.cwd().resolve()
        if cwd.is_relative_to(Path(text).expanduser().resolve()):
            raise ValueError(f"out {out!r} is the working directory or holds it; it would be replaced by the {kind}")


def check_output_dir(out: str, *, kind: str, replaces: Sequence[str] = (), inputs: Sequence[str] = ()) -> None:
    """ValueError, naming `out`, unless a command may write the directory `out` whole (replacing what is there):
    `out` is not empty, '.' or '..', not the working directory or a folder holding it, not a file, apart from every
    input (`storage.overlap`), and, when it is a local directory with content, a previous output of the same
    `kind`: it holds every file in `replaces`. Call it before the work, so a bad `out` costs nothing."""
    text = str(out).strip()
    refuse_working_dir(text, kind)
    for src in inputs:
        if src and overlap(src, text):
            raise ValueError(f"out {out!r} overlaps the input {src!r}: write the {kind} elsewhere")
    if is_s3(text):
        _check_s3_output(text, kind, replaces)
        return
    dst = Path(text).expanduser().resolve()
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"out {out!r} exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not (replaces and all((dst / f).is_file() for f in replaces)):
        raise ValueError(
            f"out {out!r} is a directory with other content (not a {kind}: no {' + '.join(replaces) or 'marker'}); "
            "it would be replaced: choose an empty or new directory, or remove it first"
        )


def _check_s3_output(out: str, kind: str, replaces: Sequence[str]) -> None:
    """The S3 side of `check_output_dir`: a folder inside a bucket, empty or an earlier output of `kind` (its
    publish deletes the prefix first, so a prefix of other objects, or a whole bucket, would be emptied)."""
    if is_bucket_root(out):
        raise ValueError(f"out {out!r} is a bucket, not a folder in one: write the {kind} to s3://bucket/folder")
    names = listdir(out)
    if names and not (replaces and all(f in names for f in replaces)):
        raise ValueError(
            f"out {out!r} is an S3 folder with other content (not a {kind}: no {' + '.join(replaces) or 'marker'}); "
            "it would be replaced: choose an empty or new folder, or remove it first"
        )


def publish_dir(out: str, write: Callable[[Path], None]) -> str:
    """Write a directory in one step: `write(tmp)` fills a temporary directory, which then replaces `out` (local:
    a rename beside it, so readers never see half a directory) or is uploaded (s3://). Returns `out`. Callers check
    `out` first with `check_output_dir`; the working directory and the folders above it are refused here too."""
    refuse_working_dir(out, "output")
    if is_s3(out):
        if is_bucket_root(out):
            raise ValueError(f"out {out!r} is a bucket, not a folder in one: its objects would be deleted")
        with tempfile.TemporaryDirectory(prefix="ditscale-publish-") as tmp:
            write(Path(tmp))
            # S3 has no rename: the old objects go first, so a crash mid-upload leaves files missing (a loud load
            # error), never a new config.json beside old weights
            if exists(out):
                delete(out)
            upload_dir(tmp, out)
        return out
    from pipelines.infra.staging import staged_dir

    given = Path(out).expanduser()
    dst = given.resolve() if given.is_symlink() else given  # through a link: its folder is replaced, not the link
    with staged_dir(dst) as tmp:  # the old directory is moved aside, not deleted, until the new one is in place
        write(tmp)
    return str(given)
