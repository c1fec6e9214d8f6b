"""Guidance-embedded students (DiT / MM-DiT guidance_embed) and the distillation loss."""

from __future__ import annotations

import pytest
import torch

from ditcore.guidance_distill import (
    GuidanceRange,
    distillation_loss,
    guided_prediction,
    load_teacher_weights,
    student_model_config,
)
from ditcore.models import build_model, config_from_dict, config_to_dict, resolve_config
from ditcore.objectives import ObjectiveConfig


def _pair(preset: str):
    torch.manual_seed(0)
    teacher = build_model(resolve_config(preset)).eval()
    # a trained teacher has non-zero adaLN / output layers: perturb every parameter so outputs depend on inputs
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = build_model(config_from_dict(student_model_config(config_to_dict(teacher.config)))).eval()
    load_teacher_weights(student, teacher.state_dict())
    return teacher, student


def _cond(preset: str, b: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    if preset.startswith("DiT"):
        return {"y": torch.randint(0, 10, (b,), generator=g)}, {"y": torch.full((b,), 1000)}
    emb, pooled = torch.randn(b, 16, 32, generator=g), torch.randn(b, 32, generator=g)
    mask = torch.ones(b, 16, dtype=torch.bool)
    return (
        {"text_emb": emb, "text_mask": mask, "text_pooled": pooled},
        {"text_emb": torch.zeros(16, 32), "text_mask": mask[0], "text_pooled": torch.zeros(32)},
    )


@pytest.mark.parametrize("preset", ["DiT-T/2", "MMDiT-T"])
def test_student_starts_equal_to_teacher_at_every_guidance(preset):
    teacher, student = _pair(preset)
    x, t = torch.randn(3, 4, 8, 8), torch.rand(3)
    cond, _ = _cond(preset, 3)
    ref = teacher(x, t, **cond)
    for w in (1.0, 4.0, torch.tensor([0.0, 2.5, 9.0])):
        assert torch.allclose(student(x, t, **cond, guidance=w), ref, atol=1e-6)
    # once the guidance embedder is trained, w changes the output
    with torch.no_grad():
        student.g_embedder.mlp[2].weight.normal_()
    assert not torch.allclose(student(x, t, **cond, guidance=4.0), student(x, t, **cond, guidance=1.0), atol=1e-4)


def test_guidance_input_is_validated():
    teacher, student = _pair("DiT-T/2")
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    cond, _ = _cond("DiT-T/2", 2)
    with pytest.raises(ValueError, match="without guidance_embed"):
        teacher(x, t, **cond, guidance=torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="guidance must be a scalar or"):
        student(x, t, **cond, guidance=torch.ones(3))
    with pytest.raises(ValueError, match="already guidance-distilled"):
        student_model_config(config_to_dict(student.config))
    with pytest.raises(ValueError, match="w_min <= w_max"):
        GuidanceRange(3.0, 2.0)
    with pytest.raises(ValueError, match="w_max < inf"):  # w ~ U[1, inf] passed `distill --validate-only`
        GuidanceRange(1.0, float("inf"))


def test_guided_prediction_is_cfg_per_sample():
    def fn(x, t, y):
        return x * 0 + y.float().reshape(-1, 1, 1, 1)  # cond rows: y, uncond rows: 10

    x = torch.zeros(2, 1, 2, 2)
    out = guided_prediction(
        fn, x, torch.zeros(2), {"y": torch.tensor([2, 4])}, {"y": torch.tensor([10, 10])}, torch.tensor([1.0, 3.0])
    )
    assert out[0].unique().item() == 2.0  # w = 1: the conditional prediction
    assert out[1].unique().item() == 10 + 3 * (4 - 10)


@pytest.mark.parametrize("preset", ["DiT-T/2", "MMDiT-T"])
def test_distillation_loss_is_zero_at_w1_and_decreases_with_training(preset):
    teacher, student = _pair(preset)
    obj = ObjectiveConfig(process="flow", prediction="velocity", t_sampler="logit-normal")
    x0 = torch.randn(8, 4, 8, 8)
    cond, null = _cond(preset, 8)
    g = torch.Generator().manual_seed(0)
    zero = distillation_loss(student, teacher, x0, cond, null, obj, g, GuidanceRange(1.0, 1.0))
    assert float(zero) < 1e-10  # at w = 1 the student (= teacher) already predicts the target
    rng = GuidanceRange(2.0, 5.0)

    def eval_loss():
        with torch.no_grad():
            return float(
                distillation_loss(student, teacher, x0, cond, null, obj, torch.Generator().manual_seed(7), rng)
            )

    before = eval_loss()
    assert before > 1e-4
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    student.train()
    for step in range(40):
        loss = distillation_loss(student, teacher, x0, cond, null, obj, torch.Generator().manual_seed(step), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.7 * before
