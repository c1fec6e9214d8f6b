"""Checkpoint save and restore for the training loop (layout and atomic writes: ditcore.checkpoint).

A checkpoint holds model, EMA, optimizer, LR-schedule position, RNG scheme and data position, so a resumed run
continues bit for bit (deterministic mode) or at least without a jump in the loss. Rank 0 writes; with FSDP2
every rank takes part in gathering the full state first. Remote storage gets a local directory uploaded with
its completeness manifest (checkpoint.json) last, so a half-uploaded checkpoint is never loadable. Periodic
checkpoints beyond `checkpoint.keep` are pruned; budget points and WSD branch points always stay.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ditcore.checkpoint import (
    STEP_DIR_RE,
    load_model_weights,
    load_optimizer_state,
    read_optimizer_state,
    save_checkpoint,
)
from jobs.train.config import lr_factor
from jobs.train.parallel import StateDictHolder, state_by_index, state_by_name, to_cpu_full
from jobs.train.plan import RunPlan
from pipelines.infra.code import software_versions

SHARDED_DIR = "dcp"  # torch.distributed.checkpoint files of a sharded checkpoint (checkpoint.sharded)


@dataclass
class Progress:
    """Where a run is: step, data position, images and FLOPs consumed (saved in state.json)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # passes over the training split begun
    batch_in_epoch: int = 0  # batches of the current pass already consumed (where a resumed run continues)
    images_seen: int = 0
    train_flops: float = 0.0  # training FLOPs spent (3 x forward per image, the budget's unit)
    metrics: dict[str, float] = field(default_factory=dict)  # what the run last logged
    # Fingerprints of the training code that took these steps (pipelines/infra/code.py), the restored checkpoint's
    # included: a run resumed, or a WSD branch started, under changed code names both codes.
    codes: list[str] = field(default_factory=list)
    # The Python / torch / numpy versions that took these steps (pipelines/infra/code.py `software_versions`), the
    # restored checkpoint's included: a run resumed under another torch names both.
    software: list[dict[str, Any]] = field(default_factory=list)

    def as_state(self) -> dict[str, Any]:
        """The progress fields of state.json."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "images_seen": self.images_seen,
            "train_flops": self.train_flops,
            "codes": self.codes,
            "software": self.software,
        }


def restore_weights(
    restore: str, model: Optional[nn.Module], ema: nn.Module, plan: RunPlan, own: bool, weights: bool = True
) -> Progress:
    """Load weights (+ EMA) from a checkpoint directory into the full modules (unless `weights` is False: a
    sharded checkpoint, loaded after wrapping by `restore_sharded`, or a rank without the host model); the progress.

    FLOPs and images follow the step count (a WSD branch starting from its main run's checkpoint changes nothing
    else); metrics are kept only when resuming the run's own checkpoint. The codes that trained the checkpoint carry
    over, with this plan's code added.
    """
    if weights:
        load_model_weights(restore, model, which="model")
        if (Path(restore) / "ema.safetensors").exists():
            load_model_weights(restore, ema, which="ema")
        else:
            ema.load_state_dict(model.state_dict())
    saved = json.loads((Path(restore) / "state.json").read_text())
    p = Progress(**{k: saved[k] for k in ("step", "epoch", "batch_in_epoch") if k in saved})
    p.images_seen = p.step * plan.cfg.data.batch_size
    p.train_flops = p.step * plan.cfg.data.batch_size * plan.train_flops_per_image
    p.codes = with_code(recorded_codes(saved), plan.code)
    p.software = with_software(saved.get("software") or [])
    if own:
        p.metrics = dict(saved.get("metrics") or {})
    return p


# The code of a checkpoint written before state.json recorded codes: unknown, so never taken for this code's.
UNRECORDED = "unrecorded"


def with_code(codes: list[str], code: str) -> list[str]:
    """`codes` with `code` appended (once; an empty fingerprint is not recorded)."""
    return list(codes) + ([code] if code and code not in codes else [])


def with_software(records: list[dict]) -> list[dict]:
    """`records` (the software that trained a checkpoint) with this process's appended (once). A checkpoint written
    before state.json recorded software adds nothing: unknown, it is not taken for other software."""
    here = software_versions()
    return list(records) + ([here] if here not in records else [])


def recorded_codes(state: dict) -> list[str]:
    """The codes that trained a checkpoint (its state.json, read); [UNRECORDED] for one written before they were
    recorded."""
    return list(state.get("codes") or [UNRECORDED])


def restore_optimizer(
    restore: str, raw: nn.Module, optimizer: torch.optim.Optimizer, names: list[str], fsdp: bool
) -> None:
    """Load the optimizer state of `restore` (if it has one); FSDP2 ranks each keep their shard of it."""
    if not (Path(restore) / "optimizer.json").exists():
        return
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        full = state_by_name(read_optimizer_state(restore), names)
        set_optimizer_state_dict(raw, optimizer, optim_state_dict=full, options=StateDictOptions(full_state_dict=True))
    else:
        load_optimizer_state(restore, optimizer)


def is_sharded(restore: str) -> bool:
    """Whether a checkpoint directory holds a torch.distributed.checkpoint state (checkpoint.sharded)."""
    return (Path(restore) / SHARDED_DIR / ".metadata").exists()


def _sharded_state(raw: nn.Module, optimizer: torch.optim.Optimizer, ema_params: dict) -> dict[str, Any]:
    """The state torch.distributed.checkpoint saves and loads: each rank's shards (plain tensors without FSDP2)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {
        "model": get_model_state_dict(raw),
        "optim": get_optimizer_state_dict(raw, optimizer),  # creates the AdamW state first when it has none
        "ema": dict(ema_params),
    }


def restore_sharded(restore: str, raw: nn.Module, optimizer: torch.optim.Optimizer, ema_params: dict) -> None:
    """Load model, optimizer and EMA from a sharded checkpoint into this run's shards, whatever the worker count
    that wrote it (torch.distributed.checkpoint reshards on load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _sharded_state(raw, optimizer, ema_params)
    dcp.load(state, checkpoint_id=str(Path(restore) / SHARDED_DIR))
    set_model_state_dict(raw, state["model"])
    set_optimizer_state_dict(raw, optimizer, state["optim"])


def _full_weights(raw: nn.Module, ema_params: dict, fsdp: bool) -> tuple[Any, dict]:
    """Whole model and EMA weights on the host (a collective gather under FSDP2; rank 0 keeps the model's)."""
    if not fsdp:
        return raw, {n: p.detach() for n, p in ema_params.items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = StateDictHolder(
        get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True)), raw
    )
    return model, {n: to_cpu_full(p) for n, p in ema_params.items()}


def save_sharded(env: Any, plan: RunPlan, step: int, state_json: dict, *, raw, ema_params, optimizer, fsdp) -> str:
    """A sharded checkpoint (checkpoint.sharded): every rank writes its shards of model, EMA and AdamW state with
    torch.distributed.checkpoint under dcp/ (no gather); kept steps (budget points, the end) also get the whole
    model and EMA weights for evaluation and serving. Local storage: the ranks write one staging directory that rank
    0 renames into place; remote: each rank uploads what it wrote, rank 0 uploads checkpoint.json last."""
    import pyarrow.fs as pafs
    import torch.distributed.checkpoint as dcp

    fs, path = env.checkpoint_location(step)
    local = isinstance(fs, pafs.LocalFileSystem)
    stage = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial") if local else tempfile.mkdtemp()
    if local and env.rank == 0:
        shutil.rmtree(stage, ignore_errors=True)
        os.makedirs(stage)
    if not local and env.rank == 0:
        clear_remote(fs, path)
    env.barrier()
    dcp.save(_sharded_state(raw, optimizer, ema_params), checkpoint_id=os.path.join(stage, SHARDED_DIR))
    weights = _full_weights(raw, ema_params, fsdp) if step in plan.keep_steps else None
    if env.rank == 0:
        _write_small_files(Path(stage), plan, state_json, weights)
    if not local:
        _upload_tree(Path(stage), fs, path, skip={"checkpoint.json"})
    env.barrier()
    if env.rank == 0:
        _commit(Path(stage), fs, path, local)
    env.barrier()
    if not local:
        shutil.rmtree(stage, ignore_errors=True)
    return path


def _write_small_files(stage: Path, plan: RunPlan, state_json: dict, weights: Optional[tuple]) -> None:
    """config.json, state.json and (kept steps) model / EMA safetensors of a sharded checkpoint (rank 0)."""
    from safetensors.torch import save_file

    from ditcore.checkpoint import unwrap_model

    (stage / "config.json").write_text(json.dumps(checkpoint_config(plan), indent=2, sort_keys=True, default=str))
    (stage / "state.json").write_text(json.dumps({**state_json, "sharded": True}, indent=2, sort_keys=True))
    if weights is not None:
        model, ema = weights
        sd = unwrap_model(model).state_dict() if not isinstance(model, StateDictHolder) else model.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(stage / "model.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(stage / "ema.safetensors"))


def _upload_tree(stage: Path, fs: Any, path: str, skip: set[str]) -> None:
    """Upload every file under `stage` to `path` (same relative names), except `skip`."""
    for f in sorted(p for p in stage.rglob("*") if p.is_file()):
        rel = f.relative_to(stage).as_posix()
        if rel in skip:
            continue
        fs.create_dir(f"{path}/{rel.rsplit('/', 1)[0]}" if "/" in rel else path, recursive=True)
        with open(f, "rb") as src, fs.open_output_stream(f"{path}/{rel}") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)


def _commit(stage: Path, fs: Any, path: str, local: bool) -> None:
    """checkpoint.json (every file with its size, so a partial checkpoint is never loadable), then: rename the
    staging directory into place (local) or upload checkpoint.json last (remote)."""
    import pyarrow.fs as pafs

    if local:
        files = {p.relative_to(stage).as_posix(): p.stat().st_size for p in sorted(stage.rglob("*")) if p.is_file()}
    else:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = {i.path[len(path) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}
        files.pop("checkpoint.json", None)  # never its own entry (clear_remote removed an older one anyway)
    (stage / "checkpoint.json").write_text(json.dumps({"format_version": 1, "files": files, "sharded": True}))
    if not local:
        with open(stage / "checkpoint.json", "rb") as src, fs.open_output_stream(f"{path}/checkpoint.json") as dst:
            dst.write(src.read())
        return
    old = None
    if os.path.exists(path):  # moved aside, not deleted first: a kill in between leaves one whole checkpoint
        head, name = os.path.split(path)
        old = os.path.join(head, f".{name}.old-{uuid.uuid4().hex}")  # a pid repeats across containers
        os.replace(path, old)
    os.replace(stage, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _gather(
    raw: nn.Module,
    ema_params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    names: list[str],
    fsdp: bool,
    ema: nn.Module,
    rank: int,
) -> tuple[Any, Any, Any]:
    """(model, EMA, optimizer state) to save: the live objects, or full copies gathered on rank 0 (FSDP2)."""
    if not fsdp:
        return raw, ema, optimizer
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0 only
    model = StateDictHolder(get_model_state_dict(raw, options=full), raw)
    ema_full = {n: to_cpu_full(p) for n, p in ema_params.items()}
    opt = get_optimizer_state_dict(raw, optimizer, options=full)
    return model, ema_full, (state_by_index(opt, names) if rank == 0 else None)


def checkpoint_state(
    plan: RunPlan, progress: Progress, step: int, metrics: dict, point: bool, world: int
) -> dict[str, Any]:
    """state.json of a checkpoint at `step`."""
    o = plan.cfg.optim
    return {
        **progress.as_state(),
        "total_steps": plan.total_steps,
        "global_batch": plan.cfg.data.batch_size,
        "world_size": world,
        "lr_schedule": {
            "schedule": o.schedule,
            "warmup_steps": o.warmup_steps,
            "decay_fraction": o.decay_fraction,
            "total_steps": plan.total_steps,
            "lr_factor": lr_factor(max(step - 1, 0), plan.total_steps, o),
        },
        # The training RNG is re-seeded every step from (seed, rank, step) (per-sample (seed, epoch, id) in
        # deterministic mode), so (seed, step) restores it exactly for any world size.
        "rng": {"seed": plan.cfg.run.seed, "scheme": "reseed(seed, rank|sample, step|epoch)"},
        "data_position": {"epoch": progress.epoch, "batch_in_epoch": progress.batch_in_epoch},
        "budget_point": point,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def checkpoint_config(plan: RunPlan) -> dict[str, Any]:
    """config.json of the run's checkpoints: enough to rebuild the model and sample from it."""
    from ditcore.config import to_dict

    m = plan.manifest.vae
    return {
        "model": plan.model_config,
        "objective": to_dict(plan.cfg.objective),
        "data": {
            "manifest": plan.cfg.data.manifest,
            "scaling_factor": float(m.scaling_factor),
            "shift_factor": float(m.shift_factor or 0.0),
        },
        "train": to_dict(plan.cfg),
        "run_name": plan.run_name,
    }


def save(
    env: Any,
    plan: RunPlan,
    progress: Progress,
    step: int,
    metrics: dict,
    point: bool,
    *,
    raw: nn.Module,
    ema: nn.Module,
    ema_params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    names: list[str],
    fsdp: bool,
) -> Optional[str]:
    """Write <run dir>/checkpoints/step_X (rank 0; every rank calls for the FSDP2 gather) and report it."""
    if plan.cfg.checkpoint.sharded:
        state_json = checkpoint_state(plan, progress, step, metrics, point, env.world_size)
        path = save_sharded(env, plan, step, state_json, raw=raw, ema_params=ema_params, optimizer=optimizer, fsdp=fsdp)
        if env.rank == 0:
            prune(env.checkpoint_location(step)[0], path, plan.cfg.checkpoint.keep, plan.keep_steps)
        env.report({**metrics, "step": step}, path if env.rank == 0 else None)
        return path if env.rank == 0 else None
    model_src, ema_src, opt = _gather(raw, ema_params, optimizer, names, fsdp, ema, env.rank)
    path = None
    if env.rank == 0:
        import pyarrow.fs as pafs

        fs, path = env.checkpoint_location(step)
        kw = dict(
            model=model_src,
            ema=ema_src,
            config=checkpoint_config(plan),
            optimizer=opt,
            state=checkpoint_state(plan, progress, step, metrics, point, env.world_size),
        )
        if isinstance(fs, pafs.LocalFileSystem):
            save_checkpoint(path, **kw)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                upload_committed(save_checkpoint(os.path.join(tmp, "ckpt"), **kw), fs, path)
        prune(fs, path, plan.cfg.checkpoint.keep, plan.keep_steps)
    env.report({**metrics, "step": step}, path)
    return path


def clear_remote(fs: Any, path: str) -> None:
    """Empty a remote step directory before a checkpoint is uploaded into it. A re-save of a step (a resume from an
    earlier checkpoint) would otherwise upload under the old checkpoint.json, so a kill mid-upload left a directory
    that looked complete with old and new files mixed, and files of the old save the new one does not write."""
    fs.delete_dir_contents(path, missing_dir_ok=True)


def upload_committed(local: Path, fs: Any, path: str) -> None:
    """Upload a checkpoint dir with checkpoint.json (the completeness manifest) last, into an emptied `path`."""
    names = sorted(p.name for p in Path(local).iterdir())
    names = [n for n in names if n != "checkpoint.json"] + ["checkpoint.json"]
    clear_remote(fs, path)
    fs.create_dir(path, recursive=True)
    for n in names:
        with open(Path(local) / n, "rb") as src, fs.open_output_stream(f"{path}/{n}") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)


def step_dirs(fs: Any, root: str) -> dict[int, str]:
    """{step: path} of the step_XXXXXXXX checkpoint directories directly under `root` (none if it is missing)."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    matches = ((STEP_DIR_RE.match(i.base_name), i) for i in infos if i.type == pafs.FileType.Directory)
    return {int(m.group(1)): i.path for m, i in matches if m}


def checkpoint_problem(fs: Any, path: str) -> Optional[str]:
    """What makes the checkpoint at `path` one a resume never restores, or None when it is intact: no
    checkpoint.json (written last, so an upload or a delete left it torn), a checkpoint.json that is not a manifest,
    or a file it lists missing or not at its listed size. An OSError reading storage raises: unreadable now is not
    damaged."""
    import pyarrow.fs as pafs

    from ditcore.checkpoint import files_problem

    manifest = f"{path}/checkpoint.json"
    if fs.get_file_info(manifest).type != pafs.FileType.File:
        return "no checkpoint.json (torn)"
    with fs.open_input_stream(manifest) as f:
        raw = f.read()
    try:
        files = json.loads(raw.decode()).get("files")
    except (ValueError, AttributeError):  # not JSON (UnicodeDecodeError is a ValueError) or not an object
        return "checkpoint.json is not a checkpoint manifest"
    if not isinstance(files, dict):
        return "checkpoint.json has no 'files' table"
    try:
        infos = fs.get_file_info([f"{path}/{name}" for name in files])
    except (ValueError, TypeError) as exc:  # a name storage refuses (pyarrow's ArrowInvalid is a ValueError)
        return f"checkpoint.json lists a file storage cannot look up: {exc}"
    sizes = {name: info.size if info.type == pafs.FileType.File else None for name, info in zip(files, infos)}
    return files_problem(files, sizes.get)


def prune(fs: Any, new_path: str, keep: int, keep_steps: set[int]) -> None:
    """Delete periodic checkpoints beyond the newest `keep` intact ones (budget points / branch points always stay).

    Only intact checkpoints (`checkpoint_problem` is None) count: a step directory an upload or a delete left torn,
    or one whose files are damaged, at a later step than the ones being saved now (the checkpoint cadence changed on
    a resume) would otherwise hold a keep slot and get the checkpoint just written, or the last intact one before
    it, deleted. Such periodic directories are deleted (a resume never restores them); one that cannot be read now
    (an OSError) is neither counted nor deleted; the one just written never is deleted."""
    import logging

    root, new_name = new_path.rsplit("/", 1)
    dirs = step_dirs(fs, root)
    new_step = next((s for s, p in dirs.items() if p.rsplit("/", 1)[-1] == new_name), None)
    periodic = sorted(s for s in dirs if s not in keep_steps and s != new_step)
    complete, damaged = [], []
    for s in periodic:
        try:
            problem = checkpoint_problem(fs, dirs[s])
        except OSError:
            continue  # unreadable now (S3 throttled, a network error): left alone, checked again at the next save
        if problem is None:
            complete.append(s)
        else:
            damaged.append(s)
            logging.getLogger(__name__).warning(
                "deleting checkpoint %s, which no resume restores: %s", dirs[s], problem
            )
    slots = max(1, keep) - (1 if new_step is not None and new_step not in keep_steps else 0)
    for s in [*damaged, *(complete[:-slots] if slots > 0 else complete)]:
        try:
            fs.delete_dir(dirs[s])
        except OSError:
            pass  # a concurrent prune or a vanished directory: nothing left to delete
