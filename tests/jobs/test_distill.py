"""`ditscale distill`: a tiny guidance distillation on a local Ray reduces the distillation loss, its MLflow run is
nested under the teacher's, and bad input is refused before any cluster work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ditcore.checkpoint import load_checkpoint, save_checkpoint
from ditcore.config import ConfigError
from ditcore.guidance_distill import GuidanceRange, distillation_loss, load_teacher_weights
from ditcore.models import build_model, config_from_dict
from ditcore.objectives import ObjectiveConfig
from jobs.distill.config import DistillConfig
from jobs.distill.driver import distill_plan, run_distill
from jobs.train.checkpointing import checkpoint_config
from jobs.train.config import TrainConfig
from jobs.train.plan import resolve_run
from pipelines.infra import storage
from pipelines.infra.config_files import load_config
from tests.jobs._train_helpers import make_latent_dataset

TEXT = (8, 16, 16)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict:
    return make_teacher(tmp_path_factory.mktemp("distill"))


def make_teacher(root) -> dict:
    """A perturbed MMDiT-T teacher checkpoint as `ditscale train` lays it out, with a recorded MLflow run."""
    from pipelines.infra import tracking

    data = make_latent_dataset(root / "lat", n=16, num_classes=None, text=TEXT)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_config(
        TrainConfig,
        None,
        [f"data.manifest={data}", "model.preset=MMDiT-T", "data.batch_size=8", "data.val_samples=0"]
        + ["mlflow.experiment=teach"],
    )
    plan = resolve_run(cfg, check_mlflow=False)
    torch.manual_seed(0)
    model = build_model(config_from_dict(plan.model_config))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run_dir = root / "runs" / "teacher"
    ckpt = save_checkpoint(
        run_dir / "checkpoints" / "step_00000010", model=model, ema=model, config=checkpoint_config(plan), state={}
    )
    client = tracking.client(uri, check=False)
    run_id, _ = tracking.attach_run(client, str(run_dir / "mlflow_run.json"), experiment="teach", name="teacher")
    return {"ckpt": str(ckpt), "data": data, "uri": uri, "run_id": run_id, "root": root}


def _loss(model, teacher_model, data: str, obj: ObjectiveConfig, null: dict) -> float:
    from pipelines.latents.reader import load_latents_numpy

    rows = load_latents_numpy(data)
    x0 = torch.from_numpy(rows["latent_mean"].astype(np.float32)) * 0.5
    cond = {
        "text_emb": torch.from_numpy(rows["text_emb"].astype(np.float32)),
        "text_mask": torch.from_numpy(rows["text_mask"].astype(bool)),
        "text_pooled": torch.from_numpy(rows["text_pooled"].astype(np.float32)),
    }
    total = 0.0
    with torch.no_grad():
        for seed in range(4):
            g = torch.Generator().manual_seed(seed)
            total += float(distillation_loss(model, teacher_model, x0, cond, null, obj, g, GuidanceRange(2.0, 4.0)))
    return total / 4


@pytest.mark.slow
def test_tiny_distillation_on_ray_reduces_the_loss_and_nests_under_the_teacher(teacher, tmp_path, capsys):
    import ray

    from pipelines.infra import tracking
    from pipelines.latents.reader import load_null_text

    cfg = DistillConfig(
        teacher=teacher["ckpt"],
        w_min=2.0,
        w_max=4.0,
        steps=40,
        lr=2e-3,
        warmup_steps=2,
        batch_size=8,
        val_samples=8,
        tracking_uri=teacher["uri"],
        log_every=10,
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        out = run_distill(cfg)
    finally:
        ray.shutdown()
    assert out["status"] == "finished", out
    assert out["parent_run_id"] == teacher["run_id"]
    # The student starts from the teacher's weights: the teacher's codes are its too. This teacher's state.json
    # records none (a checkpoint from before codes were recorded), so its code is unknown, and the run says so.
    from pipelines.infra.code import training_code_fingerprint

    assert out["codes"] == ["unrecorded", training_code_fingerprint()], out["codes"]
    said = capsys.readouterr().out
    assert "started from a checkpoint, trained in part or whole by other training code (fingerprint unrecorded;" in said
    student_dir = out["last_checkpoint"]
    assert Path(student_dir).parent.parent.parent == Path(teacher["ckpt"]).parent.parent / "distill"
    t = load_checkpoint(teacher["ckpt"]).model
    trained = load_checkpoint(student_dir, use_ema=False).model
    assert trained.config.guidance_embed
    fresh = build_model(trained.config)
    load_teacher_weights(fresh, t.state_dict())
    obj = ObjectiveConfig(**load_checkpoint(teacher["ckpt"]).config["objective"])
    null = {k: v.float() if v.is_floating_point() else v for k, v in load_null_text(teacher["data"]).items()}
    before, after = _loss(fresh, t, teacher["data"], obj, null), _loss(trained, t, teacher["data"], obj, null)
    assert after < 0.8 * before, (before, after)
    client = tracking.client(teacher["uri"], check=False)
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags[tracking.PARENT_TAG] == teacher["run_id"]
    assert run.data.tags[tracking.ROLE_TAG] == "distill"
    assert run.info.experiment_id == client.get_run(teacher["run_id"]).info.experiment_id
    assert float(run.data.params["w_max"]) == 4.0 and "val_loss" in run.data.metrics
    assert storage.read_json(str(Path(student_dir).parent.parent / "distill.json"))["teacher"] == teacher["ckpt"]


def test_bad_distillation_input_is_refused_before_cluster_work(teacher, tmp_path):
    base = DistillConfig(teacher=teacher["ckpt"], tracking_uri=teacher["uri"], batch_size=8, val_samples=4)
    plan = distill_plan(base)
    assert plan.model_config["guidance_embed"] is True and plan.total_steps == base.steps
    # An image costs the student's step (3 forwards) and the teacher's conditional + unconditional forwards.
    f = plan.flops
    assert f["train_flops_per_image"] == f["student_train_flops_per_image"] + 2 * f["teacher_forward_flops"]
    assert 0.9 < f["teacher_forward_flops"] / f["forward_flops"] <= 1.0  # the teacher has no guidance embedder
    assert plan.point_steps[base.steps] == base.steps * base.batch_size * f["train_flops_per_image"]
    with pytest.raises(ConfigError, match="w_min <= w_max"):
        distill_plan(dataclasses.replace(base, w_min=5.0, w_max=2.0))
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        distill_plan(dataclasses.replace(base, steps=0))
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        distill_plan(dataclasses.replace(base, teacher=str(tmp_path)))
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        distill_plan(dataclasses.replace(base, teacher=str(tmp_path / "r" / "checkpoints" / "step_1")))
    # A sharded run's intermediate step holds config.json and dcp/ but no whole weights: found here, not in every
    # worker after the cluster work started.
    import shutil

    bare = tmp_path / "r2" / "checkpoints" / "step_00000010"
    shutil.copytree(teacher["ckpt"], bare)
    for f in bare.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ConfigError, match=r"teacher: .*step_00000010' holds no whole weights \(ema.safetensors or"):
        distill_plan(dataclasses.replace(base, teacher=str(bare)))
    # Errors found in the student's TrainConfig name distill's own keys (they named run.cpus_per_worker, a key
    # distill refuses)
    with pytest.raises(ConfigError, match=r"^cpus_per_worker must be > 0, got 0"):
        distill_plan(dataclasses.replace(base, cpus_per_worker=0))
    with pytest.raises(ConfigError, match=r"^val_samples: 64 rows held out"):
        distill_plan(dataclasses.replace(base, val_samples=64))


def test_distillation_mirrors_latents_only_where_the_teacher_did(tmp_path):
    """The student trains on mirrored latents with the teacher's data.flip probability: never for a teacher trained
    without mirroring (captions that name left and right). Mirrored latents are NaN here, so drawing one fails."""
    from jobs.distill.loop import DistillTrainer
    from jobs.train.driver import run_local

    data = make_latent_dataset(tmp_path / "lat", n=16, num_classes=None, text=TEXT, mirror_nan=True)
    for flip in (0, 1):
        cfg = load_config(
            TrainConfig,
            None,
            [
                f"data.manifest={data}",
                "model.preset=MMDiT-T",
                "data.batch_size=8",
                "data.val_samples=0",
                f"data.flip={flip}",
            ],
        )
        plan = resolve_run(cfg, check_mlflow=False)
        model = build_model(config_from_dict(plan.model_config))
        run_dir = tmp_path / f"teacher{flip}"
        ckpt = save_checkpoint(
            run_dir / "checkpoints" / "step_00000010", model=model, ema=model, config=checkpoint_config(plan), state={}
        )
        student = distill_plan(DistillConfig(teacher=str(ckpt), steps=3, batch_size=8, val_samples=0, mlflow=False))
        out = run_local(student.cfg, str(tmp_path / f"student{flip}"), plan=student, trainer=DistillTrainer)
        if flip == 0:
            assert out["status"] == "finished" and out["steps"] == 3, out
        else:
            assert out["status"] == "failed" and "non-finite loss" in out["reason"], out


def _teacher_checkpoint(data: str, run_dir: Path, *overrides: str) -> str:
    cfg = load_config(
        TrainConfig,
        None,
        [f"data.manifest={data}", "model.preset=MMDiT-T", "data.batch_size=8", "data.val_samples=0", *overrides],
    )
    plan = resolve_run(cfg, check_mlflow=False)
    model = build_model(config_from_dict(plan.model_config))
    ckpt = save_checkpoint(
        run_dir / "checkpoints" / "step_00000010", model=model, ema=model, config=checkpoint_config(plan), state={}
    )
    return str(ckpt)


def test_teachers_trained_with_mup_or_micro_batches_can_be_distilled(teacher, tmp_path):
    """The student keeps the teacher's muP parameterisation (forcing it off made the student's model config differ
    from the teacher's) and none of its FSDP / micro-batch settings (the student trains with DDP)."""
    for overrides, mup in ((("optim.mup=true",), True), (("run.grad_accum=2",), False)):
        ckpt = _teacher_checkpoint(teacher["data"], tmp_path / overrides[0].split("=")[0], *overrides)
        plan = distill_plan(DistillConfig(teacher=ckpt, batch_size=8, val_samples=0, mlflow=False))
        assert plan.model_config["guidance_embed"] is True
        assert bool(plan.model_config.get("mup")) is mup and plan.cfg.optim.mup is mup
        assert plan.cfg.run.grad_accum == 1 and not plan.cfg.run.fsdp and not plan.cfg.run.meta_init


def test_a_distillation_of_another_teacher_or_length_is_not_answered_by_an_earlier_one(teacher, tmp_path):
    """The default run name names the teacher's step, so two teacher checkpoints get two students; a run directory
    that holds another teacher's, step count's or guidance range's student is refused (its finished result was
    returned as the new one's), before any cluster work."""
    from jobs.train.driver import run_dir

    base = DistillConfig(teacher=teacher["ckpt"], batch_size=8, val_samples=0, mlflow=False, steps=5)
    plan = distill_plan(base)
    assert "step_00000010" in plan.run_name
    later = Path(teacher["ckpt"]).parent / "step_00000020"
    later.mkdir(exist_ok=True)
    for f in Path(teacher["ckpt"]).iterdir():
        (later / f.name).write_bytes(f.read_bytes())
    assert distill_plan(dataclasses.replace(base, teacher=str(later))).run_name != plan.run_name
    named = dataclasses.replace(base, name="student", storage=str(tmp_path / "students"))
    d = run_dir(distill_plan(named).cfg, "student")
    storage.write_json(storage.join(d, "distill.json"), {**dataclasses.asdict(named), "parent_run_id": None})
    for changed, key in (({"steps": 9}, "steps"), ({"teacher": str(later)}, "teacher"), ({"w_max": 5.0}, "w_max")):
        with pytest.raises(ConfigError, match=rf"other settings \({key}: "):
            run_distill(dataclasses.replace(named, **changed))
