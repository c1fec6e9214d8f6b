"""FID of a training run's budget points, cached per evaluation setting and logged to the run's MLflow record.

A point's FID is cached in <run dir>/eval/step_X-<key>.json where <key> hashes every setting that changes it
(sample count, sampler, steps, guidance, seed, feature network), so re-evaluating with other settings never
returns a stale number.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from jobs.evaluation.cpus import spare_cpus
from jobs.evaluation.fid import FIDSettings, eval_threads, evaluate_checkpoint, sampling_compute
from jobs.scaling.points import ScalingPoint
from jobs.train.plan import RunPlan
from pipelines.infra import storage


def fid_settings(plan: RunPlan) -> FIDSettings:
    """The evaluation settings of a run (its eval section)."""
    e = plan.cfg.eval
    return FIDSettings(num_samples=e.num_samples, sampler=e.sampler, steps=e.steps, guidance=e.guidance, seed=e.seed)


def evaluate_points(
    plan: RunPlan, points: list[ScalingPoint], usage: Optional[dict[str, float]] = None
) -> list[ScalingPoint]:
    """Each point with its FID (+ attribute accuracy) filled in, cached and logged to MLflow as `fid` by step.

    Sampling in this process (eval.num_actors 0) runs on the CPUs the run's workers released, plus, per point, the
    idle CPUs of the node that `spare_cpus` reserves (eval.spare_cpus); `usage["eval_extra_cpu_s"]` adds up the
    CPU-seconds of those extra CPUs (for the sweep's goodput breakdown)."""
    ev_cfg = plan.cfg.eval
    in_process = ev_cfg.num_actors == 0
    own_cpus = plan.cfg.run.num_workers * plan.cfg.run.cpus_per_worker
    settings = fid_settings(plan)
    network = plan.manifest.fid.feature_net if plan.manifest.fid is not None else ""
    compute = sampling_compute(ev_cfg.num_actors, ev_cfg.num_gpus)
    key = settings.key(network or "", plan.cfg.eval.classifier, compute)
    client = None
    if plan.mlflow_run_id:
        from pipelines.infra import tracking

        client = tracking.client(plan.tracking_uri, check=False)
    out = []
    for p in points:
        cache = storage.join(plan.run_dir, "eval", f"step_{p.step:08d}-{key}.json")
        if storage.exists(cache):
            ev = storage.read_json(cache)
        else:
            threads = eval_threads()  # + the reserved CPUs; used only when sampling in this process
            with spare_cpus(own_cpus, threads=threads, enabled=ev_cfg.spare_cpus and in_process) as extra:
                t0 = time.perf_counter()
                ev = evaluate_checkpoint(
                    p.checkpoint,
                    plan.cfg.data.manifest,
                    settings,
                    num_actors=ev_cfg.num_actors,
                    cpus_per_actor=plan.cfg.run.cpus_per_worker,
                    classifier=ev_cfg.classifier,
                    num_gpus=ev_cfg.num_gpus,
                    threads=threads + extra,
                )
                if usage is not None:
                    usage["eval_extra_cpu_s"] = usage.get("eval_extra_cpu_s", 0.0) + extra * (time.perf_counter() - t0)
            storage.write_json(cache, {**ev, "extra_threads": extra})
        p = dataclasses.replace(
            p,
            fid=ev["fid"],
            fid_network=ev.get("fid_network"),
            fid_samples=ev["num_samples"],
            fid_feature_dim=ev.get("feature_dim"),
            fid_se=ev.get("fid_se"),
            fid_ci=ev.get("fid_ci"),
            eval_key=key,
            attr_acc=ev.get("attr_acc"),
            class_acc=ev.get("class_acc"),
        )
        if client is not None:
            from pipelines.infra.tracking import log_metrics

            log_metrics(
                client, plan.mlflow_run_id, {"fid": p.fid, "attr_acc": p.attr_acc, "class_acc": p.class_acc}, p.step
            )
            from pipelines.infra.tracking import SAMPLES_DIR, log_checkpoint_grid

            grid_kw = {k: getattr(settings, k) for k in ("sampler", "steps", "guidance", "seed")}
            grid = f"{SAMPLES_DIR}/step_{p.step:08d}.png"  # a grid of the point's first FID samples
            log_checkpoint_grid(client, plan.mlflow_run_id, p.checkpoint, grid, **grid_kw)
        out.append(p)
    return out
