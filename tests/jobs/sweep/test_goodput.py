"""Goodput arithmetic: training FLOPs over wall x peak, and the wall time divided into phases plus idle."""

from __future__ import annotations

import pytest

from jobs.sweep.goodput import format_goodput, sweep_goodput
from jobs.sweep.trial import trial_timing


def test_trial_timing_attributes_the_training_wall_not_spent_in_loops_to_startup():
    runs = [
        {"timing": {"setup_s": 1.0, "data_s": 0.5, "step_s": 20.0, "checkpoint_s": 1.5}},
        {"timing": {"setup_s": 0.5, "data_s": 0.5, "step_s": 4.0, "checkpoint_s": 0.0}},
    ]
    t = trial_timing(runs, train_wall=30.0, eval_wall=6.0)
    assert t["step_s"] == 24.0 and t["setup_s"] == 1.5 and t["checkpoint_s"] == 1.5
    assert t["startup_s"] == pytest.approx(30.0 - 28.0) and t["eval_s"] == 6.0 and t["wall_s"] == 36.0
    assert t["eval_extra_cpu_s"] == 0.0
    runs[1]["eval_extra_cpu_s"] = 2.5  # CPU-seconds its evaluation ran on idle CPUs it reserved
    assert trial_timing(runs, train_wall=30.0, eval_wall=6.0)["eval_extra_cpu_s"] == 2.5
    # A run trained by an earlier invocation (only evaluated by this one): its loops are not this trial's time,
    # its evaluation is.
    runs[0]["run_name"], runs[1]["run_name"] = "t-main", "t-b0"
    t = trial_timing(runs, train_wall=6.0, eval_wall=6.0, trained_before=frozenset({"t-main"}))
    assert t["step_s"] == 4.0 and t["setup_s"] == 0.5 and t["startup_s"] == pytest.approx(1.0)
    assert t["eval_extra_cpu_s"] == 2.5
    runs[0]["eval_extra_cpu_s"] = 1.0
    t = trial_timing(runs, train_wall=0.1, eval_wall=6.0, trained_before=frozenset({"t-main", "t-b0"}))
    assert t["step_s"] == 0.0 and t["startup_s"] == pytest.approx(0.1) and t["eval_extra_cpu_s"] == 3.5


def test_evaluation_on_borrowed_idle_cpus_counts_as_evaluation_not_idle():
    timing = {"startup_s": 0.0, "setup_s": 0.0, "data_s": 0.0, "step_s": 40.0, "checkpoint_s": 0.0, "eval_s": 20.0}
    plain = sweep_goodput([{"train_flops": 1e12, "cpus": 1.0, "timing": timing}], wall_s=60.0, num_cpus=2.0,
                          peak_flops=1e11)  # fmt: skip
    borrowed = {**timing, "eval_extra_cpu_s": 15.0}
    g = sweep_goodput([{"train_flops": 1e12, "cpus": 1.0, "timing": borrowed}], wall_s=60.0, num_cpus=2.0,
                      peak_flops=1e11)  # fmt: skip
    assert g["time"]["eval_s"] == plain["time"]["eval_s"] + 15.0 == 35.0
    assert g["time"]["idle_s"] == plain["time"]["idle_s"] - 15.0 == 45.0
    assert g["goodput"] == plain["goodput"]


def test_sweep_goodput_and_idle_share():
    timing = {"startup_s": 5.0, "setup_s": 1.0, "data_s": 1.0, "step_s": 40.0, "checkpoint_s": 1.0, "eval_s": 12.0}
    records = [
        {"trial_id": "a", "train_flops": 2e12, "cpus": 1.0, "timing": timing},
        {"trial_id": "b", "train_flops": 1e12, "cpus": 1.0, "timing": {**timing, "step_s": 20.0}},
        {"trial_id": "c", "train_flops": 9e12, "status": "finished"},  # ran in an earlier invocation: not counted
    ]
    g = sweep_goodput(records, wall_s=60.0, num_cpus=2.0, peak_flops=1e11)
    assert g["goodput"] == pytest.approx(3e12 / (60.0 * 1e11))
    assert g["trials"] == 2 and g["time"]["step_s"] == 60.0
    assert g["time"]["idle_s"] == pytest.approx(120.0 - sum(v for k, v in g["time"].items() if k != "idle_s"))
    assert sum(g["time_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "goodput 50.0%" in format_goodput(g)


def test_goodput_names_every_peak_reading_and_divides_by_the_one_it_was_given():
    timing = {"startup_s": 1.0, "setup_s": 0.0, "data_s": 0.0, "step_s": 8.0, "checkpoint_s": 0.0, "eval_s": 1.0}
    records = [{"trial_id": "a", "train_flops": 1e12, "cpus": 1.0, "timing": timing}]
    g = sweep_goodput(records, wall_s=10.0, num_cpus=2.0, peak_flops=3e11, peak_flops_measured=[2.6e11, 3e11])
    assert g["goodput"] == pytest.approx(1e12 / (10.0 * 3e11)) and g["peak_flops_measured"] == [2.6e11, 3e11]
    assert "150 GFLOP/s measured, best of 130/150" in format_goodput(g)
    one = sweep_goodput(records, wall_s=10.0, num_cpus=2.0, peak_flops=3e11)
    assert one["peak_flops_measured"] == [3e11] and "150 GFLOP/s measured)" in format_goodput(one)


def test_a_gpu_sweep_divides_by_its_gpus_peak_and_counts_gpu_seconds():
    from jobs.sweep.goodput import gpu_peak

    timing = {"startup_s": 2.0, "setup_s": 0.0, "data_s": 0.0, "step_s": 30.0, "checkpoint_s": 2.0, "eval_s": 6.0}
    records = [  # two trials of 2 workers (one GPU each) whose MFU divided by 2 x 989 TFLOP/s
        {"trial_id": "a", "train_flops": 4e16, "cpus": 2.0, "gpus": 2, "peak_flops": 2 * 989e12, "timing": timing},
        {"trial_id": "b", "train_flops": 2e16, "cpus": 2.0, "gpus": 2, "peak_flops": 2 * 989e12, "timing": timing},
    ]
    peak = gpu_peak(records, num_gpus=4)
    assert peak == pytest.approx(4 * 989e12)
    assert gpu_peak([{"trial_id": "c", "timing": timing}], num_gpus=4) is None  # no trial recorded a peak
    g = sweep_goodput(records, wall_s=50.0, num_cpus=64.0, peak_flops=peak, num_gpus=4, peak_source="datasheet")
    assert g["goodput"] == pytest.approx(6e16 / (50.0 * 4 * 989e12)) and g["device"] == "GPU"
    # GPU-seconds: 2 trials x 2 GPUs x 40 s busy out of 4 GPUs x 50 s; the 64 CPUs do not enter
    assert g["time"]["step_s"] == 120.0 and g["time"]["idle_s"] == pytest.approx(200.0 - 160.0)
    assert sum(g["time_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "on 4 GPUs x 989 TFLOP/s, datasheet" in format_goodput(g)
    # A CPU sweep is unchanged by the new fields.
    cpu = sweep_goodput([{**records[0], "gpus": 0}], wall_s=50.0, num_cpus=2.0, peak_flops=2e11)
    assert cpu["device"] == "CPU" and cpu["time"]["step_s"] == 60.0 and "GFLOP/s measured" in format_goodput(cpu)
