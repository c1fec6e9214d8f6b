"""Images/s of a guidance-distilled student (one forward per step) against its teacher with classifier-free guidance
(two halves per forward), through the one generation pipeline that the sampler service runs, same prompts, seeds,
sampler and steps. Prints both rates and their ratio, measured in the same run.

    .venv/bin/python bench/distill_throughput.py TEACHER_CKPT STUDENT_CKPT --guidance 3 --steps 10 --num 128
"""

from __future__ import annotations

import argparse
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
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from pipelines.generation import GenerationPipeline, SamplerSettings
    from pipelines.latents.reader import load_latents_numpy

    teacher = GenerationPipeline.from_checkpoint(a.teacher, device="cpu", text_encoder=False)
    student = GenerationPipeline.from_checkpoint(a.student, device="cpu", text_encoder=False)
    rows = load_latents_numpy(teacher.manifest_uri, limit=a.num, columns=["text_emb", "text_mask", "text_pooled"])
    cond = {
        "text_emb": torch.from_numpy(rows["text_emb"].astype(np.float32)),
        "text_mask": torch.from_numpy(rows["text_mask"].astype(bool)),
        "text_pooled": torch.from_numpy(rows["text_pooled"].astype(np.float32)),
    }
    seeds = list(range(len(rows["text_emb"])))
    s = SamplerSettings(sampler=a.sampler, steps=a.steps, guidance=a.guidance)
    rt = _rate(teacher, cond, seeds, s, a.repeats)
    rs = _rate(student, cond, seeds, s, a.repeats)
    print(f"teacher CFG w={a.guidance:g}: {rt:.1f} images/s")
    print(f"student    w={a.guidance:g}: {rs:.1f} images/s")
    print(f"student / teacher: {rs / rt:.2f}x ({a.sampler}, {a.steps} steps, {len(seeds)} images, CPU)")


if __name__ == "__main__":
    main()
