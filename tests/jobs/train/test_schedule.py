"""The learning-rate schedules step by step (jobs.train.config.lr_factor) and the budget points a run evaluates
(jobs.train.plan.budget_points)."""

from __future__ import annotations

import pytest

from ditcore.config import ConfigError
from jobs.train.config import OptimConfig, TrainConfig, lr_factor, wsd_decay_start
from jobs.train.plan import _check_numbers, budget_points


def _factors(total: int, **kw) -> list[float]:
    o = OptimConfig(**kw)
    return [lr_factor(s, total, o) for s in range(total)]


@pytest.mark.parametrize("total", [1, 2, 3, 5, 7, 10, 14, 100])
def test_every_wsd_decay_step_moves_the_weights_and_decays(total):
    f = _factors(total, schedule="wsd", warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.0)
    start = wsd_decay_start(total, OptimConfig(schedule="wsd", decay_fraction=0.2))
    assert f[:start] == [1.0] * start  # stable up to the branch point
    decay = f[start:]
    assert len(decay) >= 1 and all(0.0 < x < 1.0 for x in decay)  # no step at lr 0, no undecayed "decay"
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing
    d = len(decay)
    assert decay == pytest.approx([1 - k / (d + 1) for k in range(1, d + 1)])


def test_wsd_decays_towards_its_floor():
    f = _factors(10, schedule="wsd", warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.4)
    assert f[-2:] == pytest.approx([1 - 0.6 / 3, 1 - 1.2 / 3]) and min(f) > 0.4


def test_cosine_peaks_at_the_end_of_warmup_and_then_only_falls():
    f = _factors(10, schedule="cosine", warmup_steps=2, min_lr_ratio=0.0)
    assert f[:2] == [0.5, 1.0]  # the last warmup step reaches the peak, alone ...
    assert all(a > b for a, b in zip(f[1:], f[2:]))  # ... and every step after it is lower than the one before
    assert f[-1] > 0.0  # the last step still moves the weights
    g = _factors(3, schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert g[0] == 1.0 and g[0] > g[1] > g[2] > 0.0  # no warmup: the first step is the peak
    assert _factors(1, schedule="cosine", warmup_steps=0) == [1.0]


def _cfg(budget: float, budgets: list[float]) -> TrainConfig:
    c = TrainConfig()
    c.data.batch_size = 10
    c.budget_flops = budget
    c.eval.budgets = budgets
    return c


def test_an_eval_budget_on_the_final_step_cannot_relabel_the_run():
    fpi = 1e6  # one step: 1e7 FLOPs
    assert budget_points(_cfg(1e8, [4e7]), fpi) == (10, {10: 1e8, 4: 4e7})
    assert budget_points(_cfg(1e8, [4e7, 1e8, 4e7]), fpi) == (10, {10: 1e8, 4: 4e7})  # listed again: one point
    with pytest.raises(ConfigError, match=r"eval.budgets: 9.5e\+07 rounds to step 10, the step of budget_flops=1e\+08"):
        budget_points(_cfg(1e8, [9.5e7]), fpi)
    same = r"eval.budgets: 4.8e\+07 rounds to step 5, the step of eval.budgets entry 4.2e\+07"
    with pytest.raises(ConfigError, match=same):
        budget_points(_cfg(1e8, [4.2e7, 4.8e7]), fpi)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("shuffle_buffer", -5, r"data.shuffle_buffer must be >= 0 \(0: no shuffling\), got -5"),
        ("seed", 2**33, r"eval.seed must be in \[0, 2\*\*32 - 1\], got 8589934592"),
    ],
)
def test_numbers_a_run_would_fail_on_after_training_are_refused_before_it(key, value, message):
    c = TrainConfig()
    c.eval.num_samples = 320
    setattr(c.data if key == "shuffle_buffer" else c.eval, key, value)
    with pytest.raises(ConfigError, match=message):
        _check_numbers(c)
