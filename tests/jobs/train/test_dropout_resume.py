"""A model with dropout (the U-Net's residual blocks) resumes to the weights of an uninterrupted run: its masks come
from the global generator, which every training step seeds from (run seed, rank, step)."""

from __future__ import annotations

import dataclasses
import shutil

import torch
from safetensors.torch import load_file

from jobs.train.data import driver_rows
from jobs.train.loop import LocalEnv, Trainer
from jobs.train.plan import attach_worker_data, resolve_run
from tests.jobs._train_helpers import make_latent_dataset, train_config


def _train(cfg, root, resume=None):
    plan = dataclasses.replace(resolve_run(cfg, check_mlflow=False), mlflow_run_id=None, tracking_uri=None)
    attach_worker_data(plan)
    env = LocalEnv(rows=driver_rows(plan, None), checkpoint_root=str(root), resume_from=resume)
    return Trainer(plan, env).run()


def test_a_resumed_run_with_dropout_draws_the_masks_of_the_uninterrupted_one(tmp_path):
    man = make_latent_dataset(tmp_path / "lat", n=16, num_classes=10)
    cfg = train_config(
        man,
        tmp_path,
        "model.preset=UNet-T",
        "model.overrides.dropout=0.3",
        "optim.warmup_steps=1",
        "mlflow.enabled=false",
        "checkpoint.every_n_steps=2",
        "run.name=u",
        tracking=False,
    )
    fpi = resolve_run(cfg, check_mlflow=False).flops["train_flops_per_image"]
    cfg = dataclasses.replace(cfg, budget_flops=fpi * cfg.data.batch_size * 4)  # 4 steps
    _train(cfg, tmp_path / "full")
    shutil.copytree(tmp_path / "full/checkpoints/step_00000002", tmp_path / "at2")
    _train(cfg, tmp_path / "resumed", resume=str(tmp_path / "at2"))
    a = load_file(str(tmp_path / "full/checkpoints/step_00000004/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/step_00000004/model.safetensors"))
    assert not all(torch.equal(a[k], load_file(str(tmp_path / "at2/model.safetensors"))[k]) for k in a)  # it trained
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_runs_draw_one_dropout_mask_per_sample_whatever_the_micro_batching(tmp_path):
    # run.deterministic: a sample's randomness follows the sample, so grad_accum 1 and 2 take the same steps.
    man = make_latent_dataset(tmp_path / "lat", n=16, num_classes=10)
    weights = []
    for accum in (1, 2):
        cfg = train_config(
            man,
            tmp_path / f"a{accum}",
            "model.preset=UNet-T",
            "model.overrides.dropout=0.3",
            "optim.warmup_steps=1",
            "mlflow.enabled=false",
            "run.deterministic=true",
            f"run.grad_accum={accum}",
            "run.name=u",
            tracking=False,
        )
        fpi = resolve_run(cfg, check_mlflow=False).flops["train_flops_per_image"]
        cfg = dataclasses.replace(cfg, budget_flops=fpi * cfg.data.batch_size * 2)  # 2 steps
        _train(cfg, tmp_path / f"a{accum}" / "out")
        weights.append(load_file(str(tmp_path / f"a{accum}/out/checkpoints/step_00000002/model.safetensors")))
    a, b = weights
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
