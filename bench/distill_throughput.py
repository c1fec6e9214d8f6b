"""Images/s of a guidance-distilled student (one forward per step) against its teacher with classifier-free guidance
(two halves per forward), through the one generation pipeline that the sampler service runs, same prompts, seeds,
sampler and steps. Prints both rates and their ratio, measured in the same run.

    .venv/bin/python bench/distill_throughput.py TEACHER_CKPT STUDENT_CKPT --guidance 3 --steps 10 --num 128

With --http, each checkpoint is deployed in turn on a local Ray Serve (the sampler service: dynamic batching up to
16, one replica with --threads CPUs) and loaded with real POST /v1/generate requests at --concurrency; prints
requests/s and latency of both and the ratio, measured in the same run.

    .venv/bin/python bench/distill_throughput.py TEACHER_CKPT STUDENT_CKPT --http --concurrency 16 --requests 64
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def _rate(pipe, cond, seeds, settings, repeats: int) -> float:
    pipe.generate(cond, seeds[:8], settings, batch_size=8)  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.generate(cond, seeds, settings, batch_size=64)
        best = max(best, len(seeds) / (time.perf_counter() - t0))
    return best


def _http_rates(a) -> dict[str, float]:
    """requests/s of teacher (CFG) and student, each deployed alone on a local Serve with the same resources."""
    for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(k, v)
    import ray
    from ray import serve
    from serve_load import _free_port

    from serve.app import make_app
    from serve.cli.loadtest import format_table, run_load

    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 2), include_dashboard=False, logging_level="WARNING")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cond = {"label": a.label} if a.label is not None else {"prompt": a.prompt}
    body = {**cond, "steps": a.steps, "guidance": a.guidance, "sampler": a.sampler}
    rates = {}
    try:
        for name, ckpt in (("teacher", a.teacher), ("student", a.student)):
            sampler = {
                "num_replicas": 1,
                "max_ongoing_requests": 64,
                "ray_actor_options": {"num_cpus": a.threads},
                "user_config": {"default_steps": a.steps, "max_batch_size": 16, "batch_wait_timeout_s": 0.02},
            }
            ingress = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 256}
            serve.run(make_app({"checkpoint": ckpt, "device": "cpu"}, {"Sampler": sampler, "Ingress": ingress}),
                      name=name, route_prefix=f"/{name}")  # fmt: skip
            row = run_load(f"http://127.0.0.1:{port}/{name}", a.concurrency, a.requests, body, warmup=a.concurrency)
            print(format_table([row], f"## {name} over HTTP ({ckpt})"), flush=True)
            rates[name] = row["throughput_rps"]
            serve.delete(name)  # free the replica: the next checkpoint gets the same resources
    finally:
        serve.shutdown()
        ray.shutdown()
    return rates


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("teacher")
    p.add_argument("student")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampler", default="dpmpp-2m")
    p.add_argument("--num", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--http", action="store_true", help="measure on the sampler service over HTTP (Ray Serve)")
    p.add_argument("--concurrency", type=int, default=16, help="--http: requests in flight")
    p.add_argument("--requests", type=int, default=64, help="--http: measured requests")
    p.add_argument("--prompt", default="a large red circle in the center", help="--http: the prompt of every request")
    p.add_argument("--label", type=int, default=None, help="--http: a class label instead (class-conditional models)")
    a = p.parse_args()
    if a.http:
        r = _http_rates(a)
        print(f"teacher CFG w={a.guidance:g}: {r['teacher']:.2f} requests/s (one image each) over HTTP")
        print(f"student    w={a.guidance:g}: {r['student']:.2f} requests/s over HTTP")
        print(f"student / teacher on the sampler service: {r['student'] / r['teacher']:.2f}x "
              f"({a.sampler}, {a.steps} steps, concurrency {a.concurrency}, {a.requests} requests, CPU)")  # fmt: skip
        return
    torch.set_num_threads(a.threads)
    from pipelines.generation import GenerationPipeline, SamplerSettings
    from pipelines.latents.reader import load_latents_numpy

    teacher = GenerationPipeline.from_checkpoint(a.teacher, device="cpu", text_encoder=False)
    student = GenerationPipeline.from_checkpoint(a.student, device="cpu", text_encoder=False)
    if teacher.conditioning == "class":  # labels 0, 1, ... wrapping around the class count
        cond, _ = teacher.label_conditions([i % int(teacher.num_classes) for i in range(a.num)])
    else:  # the data set's first captions
        rows = load_latents_numpy(teacher.manifest_uri, limit=a.num, columns=["text_emb", "text_mask", "text_pooled"])
        cond = {
            "text_emb": torch.from_numpy(rows["text_emb"].astype(np.float32)),
            "text_mask": torch.from_numpy(rows["text_mask"].astype(bool)),
            "text_pooled": torch.from_numpy(rows["text_pooled"].astype(np.float32)),
        }
    seeds = list(range(len(next(iter(cond.values())))))
    s = SamplerSettings(sampler=a.sampler, steps=a.steps, guidance=a.guidance)
    rt = _rate(teacher, cond, seeds, s, a.repeats)
    rs = _rate(student, cond, seeds, s, a.repeats)
    print(f"teacher CFG w={a.guidance:g}: {rt:.1f} images/s")
    print(f"student    w={a.guidance:g}: {rs:.1f} images/s")
    print(f"student / teacher: {rs / rt:.2f}x ({a.sampler}, {a.steps} steps, {len(seeds)} images, CPU)")


if __name__ == "__main__":
    main()
