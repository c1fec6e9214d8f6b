"""The GPU check (run by bench/gpu_check.sh): what one CUDA device does with the training and inference code paths.

Needs torch and this repository only (no Ray, no data set, no VAE download):
  1. DiT-XL/2 training step at 256 px (latent 32x32x4), bf16 autocast (or, with --precision fsdp-bf16, the
     training job's FSDP2 bf16 policy on one rank), TF32, AdamW, torch.compile:
     images/s and MFU = images/s x analytic training FLOPs per image (ditcore.flops, 3 x forward, multiply-add =
     2 FLOPs) / the device's dense bf16 peak (jobs.train.metrics.GPU_PEAK_FLOPS, or --peak-flops);
  2. the same for an MM-DiT (SD3-style joint blocks, 77 text tokens);
  3. FID sampling throughput: DiT-XL/2 Euler sampling, guidance 1.5 (two model calls per step), bf16 autocast,
     images/s of latents (the VAE decode and Inception features of evaluation are not included);
  4. sampler-service throughput: the service's GenerationPipeline (dtype auto = bf16 on CUDA) on a local
     DiT-XL/2 checkpoint with the service's batch cap (max_batch_images), one device = `num_gpus=1`; the
     checkpoint is in pixel space, so no VAE decode is timed. Skipped (with the reason) when the pipeline's
     imports (pyarrow, ...) are missing.
Each part prints one line; a part that fails prints its error and the others still run. Without CUDA the script
prints that and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ditcore import objectives  # noqa: E402
from ditcore.flops import flops_summary  # noqa: E402
from ditcore.models import build_model, resolve_config  # noqa: E402

DEVICE = {"name": "cuda", "tiny": False}  # --smoke-cpu: tiny models on the CPU (checks the script, measures nothing)
PARTS = ("train", "mmdit", "sampling", "service")  # --parts names, in the order they run
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def peak_flops(override: float | None) -> float:
    """Dense bf16 peak of device 0: --peak-flops, else the datasheet table (the one training uses when present)."""
    if override:
        return override
    try:
        from jobs.train.metrics import GPU_PEAK_FLOPS as table
    except Exception:  # noqa: BLE001 - the check runs with torch alone
        table = PEAKS
    name = torch.cuda.get_device_name(0)
    for key, val in table.items():
        if key in name:
            return val
    raise SystemExit(f"unknown GPU {name!r}: give --peak-flops (dense bf16 FLOP/s)")


def timed(fn: Callable[[], None], warmup: int, iters: int) -> float:
    """Seconds per call of `fn` after `warmup` calls (CUDA events around `iters` calls)."""
    for _ in range(warmup):
        fn()
    if DEVICE["name"] == "cpu":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0 / iters


def _cond(cfg, batch: int, dev: torch.device) -> dict[str, torch.Tensor]:
    if getattr(cfg, "text_dim", 0):
        return {
            "text_emb": torch.randn(batch, cfg.max_text_len, cfg.text_dim, device=dev),
            "text_mask": torch.ones(batch, cfg.max_text_len, dtype=torch.bool, device=dev),
            "text_pooled": torch.randn(batch, cfg.pooled_dim, device=dev),
        }
    return {"y": torch.randint(0, cfg.num_classes, (batch,), device=dev)}


PRECISIONS = ("autocast", "fsdp-bf16")  # --precision: how the training parts run the step in bf16


def _single_process_group(dev: torch.device) -> None:
    """A one-rank process group on loopback (FSDP2 needs one even on a single device)."""
    import torch.distributed as dist

    from pipelines.infra.ray_runtime import free_port  # stdlib only at import: no Ray needed

    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


def train_step(
    preset: str, overrides: dict, batch: int, compile_model: bool, precision: str = "autocast"
) -> tuple[Callable[[], None], object]:
    """(one training step of `preset` on the check's device as a closure with `.model`, its model config): random
    latents and conditioning, gradient clipping, AdamW, `torch.compile` when `compile_model`, in bf16 one of two ways:

    - "autocast": fp32 parameters under `torch.autocast(bf16)` (LayerNorm, softmax and reductions run in fp32),
      fused AdamW;
    - "fsdp-bf16": the training job's `run.fsdp=true run.fsdp_mixed_precision=bf16` path on one rank
      (jobs.train.parallel.fully_shard_blocks): fp32 sharded parameters and optimizer, every block computing in
      bf16 without autocast, gradients reduced in fp32; AdamW without `fused` (as the job runs it under FSDP2).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = torch.device(DEVICE["name"])
    cfg = resolve_config(preset, **({} if DEVICE["tiny"] else overrides))
    torch.manual_seed(0)
    model = build_model(cfg).to(dev).train()
    fsdp = precision == "fsdp-bf16"
    if fsdp:
        from jobs.train.parallel import fully_shard_blocks

        _single_process_group(dev)
        model = fully_shard_blocks(model, "bf16")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=None if fsdp else True)
    net = torch.compile(model) if compile_model else model
    obj = objectives.ObjectiveConfig()
    x0 = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=dev)
    cond = _cond(cfg, batch, dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not fsdp):
            loss = objectives.loss(net, x0, cond, gen, obj, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.model = model  # the (sharded) model the step trains, for inspection
    return step, cfg


def train_mfu(preset: str, overrides: dict, batch: int, args: argparse.Namespace, peak: float) -> str:
    """One line: training images/s and MFU of `preset` (bf16 as --precision says, compile, AdamW)."""
    step, cfg = train_step(preset, overrides, batch, args.compile, args.precision)
    fpi = float(flops_summary(cfg)["train_flops_per_image"])
    sec = timed(step, args.warmup, args.iters)
    ips = batch / sec
    mfu = ips * fpi / peak
    return (
        f"train {preset:10s} batch {batch:4d}: {ips:8.1f} img/s  {ips * fpi / 1e12:7.1f} TFLOP/s  MFU {mfu:6.1%}  "
        f"({fpi / 1e9:.1f} GFLOP/img analytic, peak {peak / 1e12:.0f} TFLOP/s, compile={args.compile}, "
        f"{args.precision})"
    )


def fid_sampling(batch: int, steps: int, args: argparse.Namespace) -> str:
    """One line: DiT-XL/2 Euler sampling images/s with guidance 1.5, bf16 autocast (the evaluation path's model)."""
    from ditcore.objectives import sampling_fn
    from ditcore.samplers import sample

    dev = torch.device(DEVICE["name"])
    cfg = resolve_config("DiT-T/2") if DEVICE["tiny"] else resolve_config("DiT-XL/2", input_size=32)
    model = build_model(cfg).to(dev).eval()
    model_fn, prediction = sampling_fn(torch.compile(model) if args.compile else model, objectives.ObjectiveConfig())
    noise = torch.randn(batch, 4, cfg.input_size, cfg.input_size, device=dev)
    cond = {"y": torch.randint(0, cfg.num_classes, (batch,), device=dev)}
    uncond = {"y": torch.full((batch,), cfg.num_classes, device=dev)}

    @torch.inference_mode()
    def run() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            sample(model_fn, noise, process="flow", prediction=prediction, sampler="euler", steps=steps, cond=cond,
                   uncond=uncond, guidance=1.5)  # fmt: skip

    sec = timed(run, 1, max(1, args.iters // 4))
    name = "DiT-T/2 (smoke)" if DEVICE["tiny"] else "DiT-XL/2 256px"
    return f"fid-sampling {name} euler {steps} steps cfg 1.5, batch {batch}: {batch / sec:8.1f} img/s (latents)"


def service(batch_images: int, steps: int, args: argparse.Namespace) -> str:
    """One line: the service's GenerationPipeline on one device (num_gpus=1), batches of max_batch_images."""
    try:
        from ditcore.checkpoint import save_checkpoint
        from ditcore.models import config_to_dict
        from pipelines.generation import GenerationPipeline, SamplerSettings
    except ImportError as e:
        return f"service: skipped, the generation pipeline needs {e.name} (not installed here)"
    name, size = ("DiT-T/2", 8) if DEVICE["tiny"] else ("DiT-XL/2", 32)
    cfg = resolve_config(name, input_size=size, in_channels=3)
    model = build_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(
            os.path.join(tmp, "step_00000001"),
            model=model,
            config={"model": config_to_dict(cfg), "objective": {}, "data": {"space": "pixel"}},
            state={"step": 1},
        )
        pipe = GenerationPipeline.from_checkpoint(str(ckpt), device=DEVICE["name"], compile=args.compile)
        settings = SamplerSettings(sampler="euler", steps=steps, guidance=1.5)
        labels = torch.arange(batch_images) % cfg.num_classes

        def run() -> None:
            pipe.generate({"y": labels}, list(range(batch_images)), settings, batch_size=batch_images)

        sec = timed(run, 1, max(1, args.iters // 4))
    return (
        f"service (GenerationPipeline, dtype {'bf16' if pipe.bf16 else 'fp32'}, num_gpus=1) max_batch_images "
        f"{batch_images}, euler {steps} steps cfg 1.5: {batch_images / sec:8.1f} img/s (pixel-space checkpoint)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="DiT-XL/2 training batch")
    ap.add_argument("--mmdit", default="MMDiT-d24", help="MM-DiT preset for the second MFU line")
    ap.add_argument("--mmdit-batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--service-images", type=int, default=64, help="the service's max_batch_images")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--peak-flops", type=float, default=None)
    ap.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="autocast",
        help="training parts: bf16 autocast over fp32 parameters (default), or the job's FSDP2 bf16 policy on one "
        "rank (run.fsdp=true run.fsdp_mixed_precision=bf16: blocks compute in bf16, LayerNorm included)",
    )
    ap.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated parts to run, in this order: {', '.join(PARTS)}"
    )
    ap.add_argument("--smoke-cpu", action="store_true", help="tiny models, one step each, on the CPU (no numbers)")
    args = ap.parse_args()
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        ap.error(f"--parts: unknown {unknown or 'empty'}; choose from {', '.join(PARTS)}")
    if args.smoke_cpu:
        DEVICE.update(name="cpu", tiny=True)
        args.batch = args.mmdit_batch = args.sample_batch = args.service_images = 2
        args.warmup, args.iters, args.sample_steps, args.compile, args.mmdit = 0, 1, 2, False, "MMDiT-T"
        return run_parts(args, peak=1e12)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing measured.")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops(args.peak_flops)
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, peak {peak / 1e12:.0f} TFLOP/s")
    return run_parts(args, peak)


def run_parts(args: argparse.Namespace, peak: float) -> int:
    """Run the chosen parts (`--parts`, default all four), one line each; 1 when any failed."""
    mm_over = {"input_size": 32, "max_text_len": 77}
    dit = "DiT-T/2" if DEVICE["tiny"] else "DiT-XL/2"
    parts = {
        "train": ("DiT-XL/2 train", lambda: train_mfu(dit, {"input_size": 32}, args.batch, args, peak)),
        "mmdit": ("MM-DiT train", lambda: train_mfu(args.mmdit, mm_over, args.mmdit_batch, args, peak)),
        "sampling": ("FID sampling", lambda: fid_sampling(args.sample_batch, args.sample_steps, args)),
        "service": ("service", lambda: service(args.service_images, args.sample_steps, args)),
    }
    failed = 0
    for name, part in (parts[p] for p in PARTS if p in args.parts):
        t0 = time.perf_counter()
        try:
            line = part()
        except Exception as e:  # noqa: BLE001 - report the part's error, run the others
            failed += 1
            line = f"{name}: FAILED {type(e).__name__}: {e}"
            traceback.print_exc()
        print(f"{line}   [{time.perf_counter() - t0:.0f} s]", flush=True)
        torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
