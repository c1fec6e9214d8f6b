"""Where a DiT training step's GPU time goes: kernel time per step by kind, against the analytic FLOPs.

The step of bench/gpu_check.py's training part (`gpu_check.train_step`: bf16 autocast or, with --precision
fsdp-bf16, the training job's FSDP2 bf16 policy on one rank; TF32, AdamW, gradient clipping, `torch.compile`),
profiled with `torch.profiler` over a few steps after warm-up. Prints the GPU kernel time per step split into
matrix multiplies (cuBLAS / CUTLASS / nvjet), attention (SDPA: cuDNN / flash / memory-efficient), Triton kernels
(inductor's fused elementwise and normalisation code), optimizer and gradient-norm kernels, and the rest; the twelve
longest kernels; and the rate the matrix multiplies reach if they did all of the analytic non-attention FLOPs.
Needs CUDA (without it, says so and exits 0) and torch only.

    python bench/gpu_profile.py [--preset DiT-XL/2] [--batch 256] [--steps 3] [--precision fsdp-bf16] [--no-compile]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gpu_check import PRECISIONS, train_step  # noqa: E402  (this folder: the check's training step)

from ditcore.flops import flops_summary  # noqa: E402

# First match wins: the cuDNN attention kernels' names also hold "sm90", like the matmuls'.
KINDS = (
    ("attention", ("sdpa", "flash", "fmha", "attention", "efficient_attention")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "matmul")),
    ("optimizer / grad norm", ("adam", "multi_tensor", "foreach", "norm_kernel")),
    ("triton (fused elementwise, norms)", ("triton",)),
)


def kind(name: str) -> str:
    n = name.lower()
    return next((k for k, keys in KINDS if any(s in n for s in keys)), "other")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="DiT-XL/2", help="a class-conditioned DiT preset (latent 32x32x4)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=4, help="steps before profiling (compile happens here)")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps")
    ap.add_argument("--precision", choices=PRECISIONS, default="autocast", help="as bench/gpu_check.py --precision")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_profile: no CUDA device (torch.cuda.is_available() is False); nothing profiled.")
        return 0
    from torch.profiler import ProfilerActivity, profile

    torch.backends.cuda.matmul.allow_tf32 = True
    step, cfg = train_step(args.preset, {"input_size": 32}, args.batch, args.compile, args.precision)
    flops = flops_summary(cfg)
    step_flops = float(flops["train_flops_per_image"]) * args.batch

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    by_kind: collections.Counter = collections.Counter()
    by_kernel: collections.Counter = collections.Counter()
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", 0.0)
        if t > 0 and e.device_type.name == "CUDA":
            by_kind[kind(e.key)] += t / args.steps / 1e3  # ms per step
            by_kernel[e.key[:100]] += t / args.steps / 1e3
    total = sum(by_kind.values())
    print(
        f"{args.preset} batch {args.batch}, compile={args.compile}, {args.precision}: "
        f"GPU kernel time {total:.1f} ms per step "
        f"({args.batch / total * 1e3:.0f} img/s if the GPU never idles); analytic {step_flops / 1e12:.1f} TFLOP/step"
    )
    for k, ms in by_kind.most_common():
        print(f"  {k:34s} {ms:8.1f} ms  {ms / total:6.1%}")
    print("longest kernels (ms per step):")
    for k, ms in by_kernel.most_common(12):
        print(f"  {ms:8.2f}  {k}")
    attn = 2 * cfg.num_tokens**2 * cfg.hidden_size * cfg.depth / float(flops["forward_macs"])  # QK^T and AV share
    mm = by_kind.get("matmul", 0.0)
    if mm:
        rate = step_flops * (1 - attn) / mm / 1e9
        print(f"matmul rate if they did all analytic non-attention FLOPs ({1 - attn:.1%} of them): {rate:.0f} TFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
