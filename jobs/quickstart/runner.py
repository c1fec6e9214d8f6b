"""The quickstart's stage runner: banners with elapsed time, markers holding config hashes, reuse of finished stages.

Each stage writes `<out>/stages/<stage>.json` holding the hash of its resolved config and of the stages before it,
each of those by its config and its result; a re-run reuses every stage whose marker matches and whose outputs still
exist, and `force` reruns everything. A stage that runs again (its outputs were missing) makes a new result, so every
stage after it runs again too. A stage's marker is removed when it starts: one interrupted part-way is run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jobs.quickstart.modes import Mode


def fmt_seconds(seconds: float) -> str:
    """m:ss."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-able value."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Context:
    """Shared state of one quickstart run: output dir, mode, results of finished stages, the Ray head it owns."""

    def __init__(self, out: Path, mode: Mode, t0: float, *, train_encoders: bool = False, shipped_dir=None) -> None:
        from jobs.quickstart.shipped import SHIPPED_DIR

        self.out = out
        self.mode = mode
        self.t0 = t0
        self.train_encoders = train_encoders  # train the built-in VAE and feature net even where shipped ones match
        self.shipped_dir = Path(shipped_dir) if shipped_dir is not None else SHIPPED_DIR
        self.results: dict[str, dict] = {}
        self.hashes: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.ray: Any = None  # pipelines.infra.ray_runtime.LocalRayHead once started
        self.serve_app: str | None = None  # the Serve application the serve stage runs
        self.force = False  # every stage reruns (`run_stages(..., force=True)`)

    def path(self, *parts: str) -> Path:
        """A path under the output directory."""
        return self.out.joinpath(*parts)

    def log(self, msg: str) -> None:
        """A progress line under the current stage's banner."""
        print(f"      {msg}", flush=True)

    def elapsed(self) -> str:
        """Time since the quickstart started (m:ss)."""
        return fmt_seconds(time.monotonic() - self.t0)

    def ensure_ray(self) -> None:
        """Start (once) the local Ray head this quickstart owns and connect to it."""
        if self.ray is None:
            from pipelines.infra.ray_runtime import LocalRayHead

            self.ray = LocalRayHead(self.path("logs"))
            self.log(f"starting a local Ray head ({self.ray.num_cpus} CPUs)")
            self.ray.start()
            self.log(f"Ray head up at {self.ray.address}; dashboard {self.ray.dashboard_url}")

    def stop_ray(self) -> None:
        """Disconnect from and stop the Ray head this quickstart started (nothing else)."""
        if self.ray is not None:
            self.ray.stop()
            self.ray = None


@dataclass
class Stage:
    """One step of the quickstart: `run(ctx) -> result` (JSON-able); `config(ctx)` is what its hash covers."""

    name: str
    title: str
    config: Callable[[Context], dict]
    run: Callable[[Context], dict]
    outputs: Callable[[dict], list[str]] = field(default=lambda result: [])  # paths that must exist to reuse it
    # The run's record (files under the output directory, e.g. report.md / report.json): set aside as
    # <name>.previous<suffix> as soon as any stage runs again, so a rerun that fails part-way never leaves the last
    # run's record looking like this one's (by name: a marker may be missing or name a moved folder).
    record: tuple[str, ...] = ()


def _reusable(ctx: Context, stage: Stage, digest: str, force: bool) -> dict | None:
    marker = ctx.path("stages", f"{stage.name}.json")
    prev = json.loads(marker.read_text()) if marker.is_file() else None
    if force or prev is None or prev.get("config_hash") != digest:
        return None
    return prev if all(Path(p).exists() for p in stage.outputs(prev["result"])) else None


def _write_marker(ctx: Context, stage: Stage, digest: str, cfg: dict, result: dict, seconds: float) -> None:
    marker = ctx.path("stages", f"{stage.name}.json")
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "stage": stage.name,
                "config_hash": digest,
                "config": cfg,
                "result": result,
                "seconds": seconds,
                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            indent=2,
            default=str,
        )
    )
    tmp.replace(marker)


def upstream_fingerprint(ctx: Context, skip: frozenset[str] = frozenset()) -> str:
    """The stages run so far (but `skip`), each by its config hash and when its outputs were made: an upstream stage
    rerun with the same config (its outputs were missing, or --force) may have written other data."""
    made = {}
    for name, digest in ctx.hashes.items():
        if name in skip:
            continue
        marker = ctx.path("stages", f"{name}.json")
        made[name] = [digest, json.loads(marker.read_text()).get("finished_at") if marker.is_file() else None]
    return config_hash(made)


def recorded_upstream(path: Path) -> str | None:
    """The `upstream` a stage recorded beside its outputs (`record_upstream`), None when absent or unreadable."""
    try:
        return json.loads(path.read_text()).get("upstream")
    except (OSError, ValueError, AttributeError):
        return None


def record_upstream(path: Path, upstream: str, **extra: Any) -> None:
    """Say what a stage's outputs in progress were made from, atomically (a torn record would read as other data
    and clear the outputs on the next run)."""
    from pipelines.infra import storage

    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_json(str(path), {"upstream": upstream, **extra})  # temp file + rename


def _state(digest: str, result: dict) -> str:
    """What the stages after this one depend on: its config hash and its result."""
    return config_hash({"config_hash": digest, "result": result})


# ![alt](path) or ![alt](<path with spaces>), with an optional "title"
_IMAGE_LINK = re.compile(r'(!\[[^\]]*\]\()(<[^>\n]+>|[^)\s]+)((?:\s+"[^"\n]*")?\))')


def keep_linked_images(md: Path, folder: Path) -> int:
    """Copy the local images a markdown file links to into `folder` (emptied first) and point its links there: the
    run about to start rewrites the plots and grids in place, and the set-aside record should keep showing its own.
    Links to files that are gone, or to URLs, stay as they are. Returns how many images were kept."""
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    elif folder.exists() or folder.is_symlink():  # a file (or link) in the way: it is this function's name
        folder.unlink()
    copied: dict[str, str] = {}

    def keep(m: re.Match) -> str:
        link = m.group(2)
        bracketed = link.startswith("<")
        src = md.parent / (link[1:-1] if bracketed else link)
        if "://" in link or not src.is_file():
            return m.group(0)
        if link not in copied:
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / f"{len(copied):02d}-{src.name}"
            shutil.copy2(src, dest)
            rel = os.path.relpath(dest, md.parent)
            copied[link] = f"<{rel}>" if bracketed or any(c in rel for c in " ()<>") else rel
        return m.group(1) + copied[link] + m.group(3)

    # The bytes as written (report.py writes UTF-8; anything else passes through unchanged).
    text = _IMAGE_LINK.sub(keep, md.read_text(encoding="utf-8", errors="surrogateescape"))
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    tmp.replace(md)
    return len(copied)


def _retire_records(ctx: Context, stages: list[Stage]) -> None:
    """Set the record stages' files aside (`Stage.record`) and drop their markers: a stage is about to run again. A
    markdown record keeps copies of the images it links to, in `<stem>.previous_files/`."""
    for stage in stages:
        for name in stage.record:
            p = ctx.path(name)
            if p.is_file():
                old = p.with_name(f"{p.stem}.previous{p.suffix}")
                p.replace(old)
                kept = keep_linked_images(old, old.with_name(f"{p.stem}.previous_files")) if p.suffix == ".md" else 0
                also = f", with its {kept} images in {p.stem}.previous_files/" if kept else ""
                ctx.log(f"the last run's {p.name} is now {old.name}{also} (this run writes its own at the end)")
        if stage.record:
            ctx.path("stages", f"{stage.name}.json").unlink(missing_ok=True)


def run_stages(ctx: Context, stages: list[Stage], force: bool) -> None:
    """Run (or reuse) every stage in order, printing a banner with the elapsed time for each."""
    ctx.force = force
    retired = False
    for i, stage in enumerate(stages, 1):
        cfg = stage.config(ctx)
        digest = config_hash({"stage": stage.name, "config": cfg, "upstream": ctx.hashes})
        prev = _reusable(ctx, stage, digest, force)
        if prev is not None:
            ctx.results[stage.name], ctx.hashes[stage.name] = prev["result"], _state(digest, prev["result"])
            ctx.seconds[stage.name] = float(prev["seconds"])
            print(
                f"==> [{i}/{len(stages)}] {stage.title}: reused (finished {prev['finished_at']}, took "
                f"{fmt_seconds(prev['seconds'])}, config {digest})   [{ctx.elapsed()}]",
                flush=True,
            )
            continue
        print(f"\n==> [{i}/{len(stages)}] {stage.title}   [{ctx.elapsed()}]", flush=True)
        if not retired:
            _retire_records(ctx, stages[i - 1 :])
            retired = True
        # An interrupted stage may have changed what its old marker describes (a sweep re-attached to its parent
        # run): without the marker the next run does it again instead of reusing it.
        ctx.path("stages", f"{stage.name}.json").unlink(missing_ok=True)
        t = time.monotonic()
        result = json.loads(json.dumps(stage.run(ctx), default=str))
        seconds = time.monotonic() - t
        ctx.results[stage.name], ctx.hashes[stage.name], ctx.seconds[stage.name] = (
            result,
            _state(digest, result),
            seconds,
        )
        _write_marker(ctx, stage, digest, cfg, result, seconds)
        print(f"    done: {stage.title} in {fmt_seconds(seconds)}   [{ctx.elapsed()}]", flush=True)
