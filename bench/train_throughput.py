"""Ray Train overhead: images/s and MFU of the training loop on Ray Train vs the same loop without Ray.

Both runs execute jobs.train.loop.Trainer with the same model, batch, data and thread count; the baseline
(`LocalEnv`) feeds in-memory numpy batches in this process, the Ray run (`RayTrainEnv`) goes through TorchTrainer
and ray.train.report, with its batches drawn from the rows in the object store (`--loader driver`, what a set under
512 MiB gets) or from its Ray Data shard (`--loader ray`, the streaming loader). Throughput is the median of the
per-interval images/s the loop reports (wall time of data fetch + step, checkpoint/report time excluded), after
dropping the first interval as warm-up. FLOPs: analytic, multiply-add = 2 FLOPs, training = 3 x forward. MFU is
relative to the measured fp32 matmul peak of one core: the runs are on the CPU (a GPU's MFU: bench/gpu_check.py).

    python bench/train_throughput.py [--model MMDiT-d2] [--batch 32] [--steps 300] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ips(reports: list, skip: int = 1) -> float:
    vals = [m["images_per_s"] for m, _ in reports if "images_per_s" in m]
    vals = vals[skip:] or vals
    return statistics.median(vals)


def main(argv: list[str] | None = None) -> int:
    """Run both loops and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="MMDiT-d2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--interval", type=int, default=25, help="steps per throughput interval (= report interval)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shuffle-buffer", type=int, default=256, help="data.shuffle_buffer (0: no shuffling)")
    p.add_argument(
        "--loader",
        default="auto",
        choices=["auto", "driver", "ray"],
        help="data.loader of the Ray run (auto: driver for sets under 512 MiB); the baseline is always in-memory",
    )
    p.add_argument("--data", default=None, help="latent data set (default: a synthetic 8x8 text set, --rows rows)")
    p.add_argument(
        "--rows",
        type=int,
        default=4096,
        help="rows of the synthetic set (epochs long enough that the "
        "per-epoch data-pipeline start is amortised, as in real runs)",
    )
    args = p.parse_args(argv)

    import ray
    import torch

    from jobs.train.config import TrainConfig
    from jobs.train.driver import run_training
    from jobs.train.metrics import peak_flops_per_worker
    from jobs.train.plan import resolve_run
    from pipelines.infra.config_files import load_config

    def load_train_config(_: None, overrides: list[str]) -> TrainConfig:
        return load_config(TrainConfig, None, overrides)

    tmp = Path(tempfile.mkdtemp(prefix="ditscale-bench-"))
    data = args.data
    if data is None:
        from tests.jobs._train_helpers import make_latent_dataset

        data = make_latent_dataset(tmp / "lat", n=args.rows, num_classes=None, text=(32, 384, 384), shards=4)
    overrides = [
        f"data.manifest={data}",
        f"data.batch_size={args.batch}",
        "data.val_samples=0",
        f"model.preset={args.model}",
        f"checkpoint.storage={tmp / 'runs'}",
        "mlflow.enabled=false",
        f"checkpoint.every_n_steps={args.interval}",
        f"mlflow.log_every={args.interval}",
        f"run.num_threads={args.threads}",
        "run.cpus_per_worker=1",
        "checkpoint.keep=100000",
        f"data.shuffle_buffer={args.shuffle_buffer}",
        f"data.loader={args.loader}",
    ]
    cfg = load_train_config(None, overrides)
    res = resolve_run(cfg, check_mlflow=False)
    from jobs.train.data import loader_kind

    loader = loader_kind(res)
    fpi = res.train_flops_per_image
    cfg = load_train_config(None, overrides + [f"budget_flops={fpi * args.batch * args.steps}"])
    torch.set_num_threads(args.threads)
    peak = peak_flops_per_worker(cfg, torch.device("cpu"))

    # Baseline: the same loop, no Ray.
    from jobs.train.driver import run_local

    t0 = time.perf_counter()
    local = run_local(cfg, str(tmp / "local"))
    local_wall = time.perf_counter() - t0
    local_ips = _ips(local["reports"])

    # Ray Train: TorchTrainer, 1 worker, Ray Data shard, ray.train.report per interval.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    out = run_training(
        load_train_config(None, overrides + [f"budget_flops={fpi * args.batch * args.steps}", "run.name=bench-ray"]),
        evaluate=False,
    )
    ray_wall = time.perf_counter() - t0
    ray.shutdown()
    # Per-interval metrics as reported with each checkpoint (state.json "metrics"; all checkpoints are kept).
    import json

    ckpts = sorted((Path(out["run_dir"]) / "checkpoints").glob("step_*"))
    reports = [(json.loads((c / "state.json").read_text())["metrics"], None) for c in ckpts]
    ray_ips = _ips(reports)
    overhead = 1.0 - ray_ips / local_ips
    print(
        f"model {args.model}: {res.flops['params']:,} params, {fpi:.3g} train FLOPs/image (3 x fwd, MAC = 2 FLOPs); "
        f"batch {args.batch}; {args.steps} steps; {args.threads} torch thread(s); peak {peak:.3g} FLOP/s (measured "
        f"fp32 matmul); Ray run's loader: {loader}"
    )
    print(f"{'loop':22s} {'images/s':>10s} {'MFU':>8s} {'wall s':>8s}")
    print(f"{'no Ray (baseline)':22s} {local_ips:10.1f} {local_ips * fpi / peak:8.2%} {local_wall:8.1f}")
    print(f"{'Ray Train (1 worker)':22s} {ray_ips:10.1f} {ray_ips * fpi / peak:8.2%} {ray_wall:8.1f}")
    print(
        f"Ray/baseline throughput ratio {ray_ips / local_ips:.3f}  ->  Ray overhead {overhead:+.1%} at steady state "
        f"(goal <= 5%); status {out['status']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
