"""Sampler service load benchmark: dynamic batching (max_batch_size 16) vs no batching (max_batch_size 1).

One run deploys a tiny class-conditional DiT twice on a local Ray Serve, one after the other on the
same resources, and measures throughput and p50/p95/p99 latency at several concurrencies. The
baseline is the unbatched deployment measured in the same run; the headline is the throughput
ratio at concurrency 16 (goal >= 2x) with both p99 latencies.

    python bench/serve_load.py                       # CPU, tiny model
    python bench/serve_load.py --num-gpus 1          # one GPU per sampler replica
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_k, _v)


def tiny_checkpoint(directory: Path, input_size: int, preset: str) -> Path:
    """A random-weight pixel-space class-conditional DiT checkpoint (weights perturbed so images are non-trivial)."""
    import torch

    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict

    model = build_model(preset, in_channels=3, input_size=input_size, num_classes=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    config = {"model": config_to_dict(model.config), "objective": {"process": "flow", "prediction": "velocity"}}
    return save_checkpoint(directory, model=model, config=config, state={"step": 0})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per mode plus the batched/unbatched ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=64, help="measured requests per concurrency level")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--preset", default="DiT-T/4")
    p.add_argument(
        "--input-size", type=int, default=8, help="image size of the pixel-space model (8 = 4 tokens with DiT-T/4)"
    )
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per sampler replica")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per sampler replica (= torch threads)")
    p.add_argument("--batch-wait", type=float, default=0.02, help="batch_wait_timeout_s of the batched mode")
    p.add_argument("--json-out", default=None, help="also write all results as JSON here")
    ns = p.parse_args(argv)
    levels = [int(c) for c in ns.concurrency.split(",")]

    import ray
    import torch
    from ray import serve

    from serve.app import make_app
    from serve.cli.loadtest import format_table, run_load

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    ckpt = tiny_checkpoint(tmp / "step_00000000", ns.input_size, ns.preset)
    # address="local": always a fresh cluster, never one a `ray start` on this machine left behind.
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 2), include_dashboard=False, logging_level="WARNING")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    device = "cuda" if ns.num_gpus > 0 else "cpu"
    print(
        f"# serve_load: {ns.preset} pixel {ns.input_size}x{ns.input_size}, {ns.steps} steps dpmpp-2m, "
        f"guidance {ns.guidance} "
        f"(CFG: 2 forward rows per image), device={device}, sampler replica num_cpus={ns.num_cpus} "
        f"num_gpus={ns.num_gpus}, "
        f"torch {torch.__version__}, ray {ray.__version__}, host cores={os.cpu_count()}",
        flush=True,
    )
    body = {"label": 3, "steps": ns.steps, "guidance": ns.guidance}
    results: dict[str, list[dict]] = {}
    try:
        for mode, max_batch in (("unbatched", 1), ("batched", 16)):
            app = make_app(
                {"checkpoint": str(ckpt), "device": device},
                {
                    "Sampler": {
                        "num_replicas": 1,
                        "max_ongoing_requests": 32,
                        "max_queued_requests": 1024,
                        "ray_actor_options": {"num_cpus": ns.num_cpus, "num_gpus": ns.num_gpus},
                        "user_config": {
                            "default_steps": ns.steps,
                            "max_batch_size": max_batch,
                            "batch_wait_timeout_s": ns.batch_wait if max_batch > 1 else 0.0,
                        },
                    },
                    "Ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 256},
                },
            )
            t0 = time.monotonic()
            serve.run(app, name=mode, route_prefix=f"/{mode}")
            url = f"http://127.0.0.1:{port}/{mode}"
            print(f"# deployed {mode} (max_batch_size={max_batch}) in {time.monotonic() - t0:.1f}s", flush=True)
            rows = [run_load(url, c, ns.requests, body, warmup=max(4, c)) for c in levels]
            results[mode] = rows
            print(format_table(rows, f"## {mode} (max_batch_size={max_batch})"), flush=True)
            serve.delete(mode)  # free the replica so the next mode gets the same resources
    finally:
        serve.shutdown()
        ray.shutdown()

    print("## batched vs unbatched (baseline: unbatched, same run)")
    for u, b in zip(results["unbatched"], results["batched"]):
        ratio = b["throughput_rps"] / u["throughput_rps"] if u["throughput_rps"] > 0 else float("nan")
        print(
            f"concurrency {u['concurrency']:>3}: throughput {b['throughput_rps']:.2f} vs "
            f"{u['throughput_rps']:.2f} req/s "
            f"= {ratio:.2f}x ; p99 {b['p99_s'] * 1e3:.0f} ms vs {u['p99_s'] * 1e3:.0f} ms"
        )
    c16 = [(u, b) for u, b in zip(results["unbatched"], results["batched"]) if u["concurrency"] == 16]
    if c16:
        u, b = c16[0]
        ratio = b["throughput_rps"] / u["throughput_rps"]
        print(
            f"RESULT concurrency 16: batched/unbatched throughput = {ratio:.2f}x (goal >= 2x: "
            f"{'met' if ratio >= 2 else 'NOT met'}); "
            f"p99 batched {b['p99_s'] * 1e3:.0f} ms, unbatched {u['p99_s'] * 1e3:.0f} ms"
        )
    if ns.json_out:
        Path(ns.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
