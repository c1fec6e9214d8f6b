"""The default training mode (run.deterministic=false: batched loss, Ray Data streaming loader, local shuffle), the
path a real data set takes: a set forced onto the streaming loader trains on 2 workers and evaluates (validation loss,
FID at the budget point); a worker killed mid-epoch resumes from its checkpoint with no jump in the loss curve and
ends at the same FLOPs budget with images seen accounted exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jobs.train.data import loader_kind
from jobs.train.driver import run_training
from jobs.train.plan import resolve_run
from tests.jobs._train_helpers import TINY_OPTIM, budget_override, config_maker, make_eval_dataset

pytestmark = pytest.mark.slow  # Ray Train on a local Ray

BATCH = 8


@pytest.fixture(scope="module")
def data40(tmp_path_factory) -> str:
    """40 class-labelled rows: 8 held out for validation, 32 train rows = 4 global batches per epoch."""
    return make_eval_dataset(tmp_path_factory.mktemp("lat40"), n=40, num_classes=4, shards=4, builtin=True)[0]


_cfg = config_maker(
    "data.loader=ray",  # the streaming reader (read_latents + filter + materialize), not the driver read
    "data.shuffle_buffer=16",
    "mlflow.experiment=test-default-mode",
    "mlflow.log_every=1",
    *TINY_OPTIM,
    "run.cpus_per_worker=1",
    preset="DiT-T/2",
    batch_size=BATCH,
    val_samples=8,
)


def test_streaming_loader_is_what_the_default_mode_runs(data40, tmp_path):
    cfg = _cfg(data40, tmp_path)
    assert cfg.run.deterministic is False  # the default
    plan = resolve_run(cfg, check_mlflow=False)
    assert loader_kind(plan) == "ray"
    auto = resolve_run(_cfg(data40, tmp_path, "data.loader=auto"), check_mlflow=False)
    assert loader_kind(auto) == "driver"  # this small set would otherwise be read on the driver


def test_streaming_loader_trains_on_two_workers_and_evaluates(ray_local, data40, tmp_path):
    evaluation = ["eval.num_samples=8", "eval.steps=2", "eval.num_actors=0"]
    out = run_training(_cfg(data40, tmp_path, "run.name=stream2", "run.num_workers=2", *evaluation, steps=6))
    assert out["status"] == "finished" and out["steps"] == 6, out
    (point,) = out["points"]
    assert point["step"] == 6 and point["images_seen"] == 6 * BATCH
    assert point["val_loss"] is not None and np.isfinite(point["val_loss"])
    assert point["fid"] is not None and np.isfinite(point["fid"]) and point["fid"] >= 0
    state = json.loads((Path(out["run_dir"]) / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["images_seen"] == 48 and state["data_position"] == {"epoch": 1, "batch_in_epoch": 2}


def _loss_history(tmp: Path, run_id: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    hist = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}").get_metric_history(run_id, "loss")
    return [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.timestamp, m.step))]


def test_worker_killed_mid_epoch_resumes_without_a_loss_jump(ray_local, data40, tmp_path):
    cfg = _cfg(data40, tmp_path)
    steps = 12  # 3 epochs of 4 batches; the worker dies at step 5 (second batch of epoch 1)
    common = [budget_override(cfg, steps), "checkpoint.every_n_steps=2", "checkpoint.keep=10", "run.max_failures=1"]
    faulty = run_training(
        _cfg(data40, tmp_path, *common, "run.name=killed", 'debug.inject_failure={"step": 5, "mode": "exit"}'),
        evaluate=False,
    )
    ref = run_training(_cfg(data40, tmp_path, *common, "run.name=uninterrupted"), evaluate=False)
    run_dir = Path(faulty["run_dir"])
    assert (run_dir / "_injected_failure_step5").exists()  # the worker really died (os._exit) once
    assert faulty["status"] == ref["status"] == "finished" and faulty["steps"] == ref["steps"] == steps

    # Same FLOPs budget, images seen accounted exactly: the replayed steps are not counted twice.
    final = [
        json.loads((Path(r["run_dir"]) / "checkpoints" / f"step_{steps:08d}" / "state.json").read_text())
        for r in (faulty, ref)
    ]
    for st in final:
        assert st["step"] == steps and st["images_seen"] == steps * BATCH
        assert st["data_position"] == {"epoch": 2, "batch_in_epoch": 4}
    budget = float(common[0].split("=", 1)[1])
    assert final[0]["train_flops"] == final[1]["train_flops"] == pytest.approx(budget, rel=1e-9)
    assert faulty["train_flops"] == ref["train_flops"] == final[0]["train_flops"]

    # The loss curve: logged steps 1..5 before the kill, then again from the checkpoint at step 4 (step 5 is
    # replayed). The replayed step starts from the same weights, so its loss is close to the first attempt's; a
    # restart from scratch would log the untrained loss there instead.
    hist = _loss_history(tmp_path, faulty["mlflow_run_id"])
    ref_hist = dict(_loss_history(tmp_path, ref["mlflow_run_id"]))
    logged = [s for s, _ in hist]
    assert sorted(set(logged)) == list(range(1, steps + 1))
    assert logged.count(5) == 2 and all(logged.count(s) == 1 for s in range(1, steps + 1) if s != 5), logged
    print("loss curves", hist, ref_hist)
    # Single steps are noisy (the reference itself can log a loss above its step 1), so the yardstick is the
    # drop of the reference's mean loss from steps 1..3 to steps 6..12.
    ref_after = [ref_hist[s] for s in range(6, steps + 1)]
    untrained_mean = sum(ref_hist[s] for s in (1, 2, 3)) / 3
    mean_ref_after = sum(ref_after) / len(ref_after)
    learned = untrained_mean - mean_ref_after
    assert learned > 0, ref_hist  # the reference run learned at all
    first5, again5 = [v for s, v in hist if s == 5]
    assert abs(again5 - first5) < 0.25 * learned, (first5, again5, learned)
    # After the resume the curve follows the uninterrupted run's, not its start: a restart from scratch would
    # put steps 6..12 near the untrained level, far from the reference's mean over the same steps.
    after = [v for s, v in hist if s >= 5][2:]
    mean_after = sum(after) / len(after)
    assert abs(mean_after - mean_ref_after) < 0.5 * learned, (hist, ref_hist)
    assert max(after) <= 1.5 * max(ref_after), hist
