"""Training-step throughput of our DiT / MM-DiT against diffusers' implementations of the same size.

Measures, in one run:
  (a) this machine's fp32 (or --dtype) matmul peak: best rate over square torch.mm sizes;
  (b) our DiT-S/2 forward + backward + AdamW step at latent 32;
  (c) diffusers' DiTTransformer2DModel with the same width / depth / heads / patch;
  (d) our MMDiT vs diffusers' SD3Transformer2DModel at matched size (77 text tokens, QK RMSNorm).
Prints img/s, achieved GFLOP/s, fraction of the measured peak and our/diffusers step-time ratios.

FLOPs convention: analytic train FLOPs per image = 3 x forward FLOPs = 6 x forward MACs (ditcore.flops),
used for both implementations (they compute the same matmuls). Ours and the baseline are timed in
alternation (ABAB...) so background load hits both alike; we report the best step of each (and the median).

  .venv/bin/python bench/model_step.py                       # CPU defaults
  .venv/bin/python bench/model_step.py --device cuda --dtype bf16 --dit DiT-XL/2 --batch 256 --skip-mmdit
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ditcore.flops import flops_summary
from ditcore.models import build_model, resolve_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: wall clock by default; `--clock cpu` times with this process's CPU time, which on a shared, overloaded
#: machine approximates the unloaded run time far better than wall time (use it with --threads 1: with more
#: threads OpenMP spin-waits are counted as CPU time too)
CLOCK = {"fn": time.perf_counter}


def now() -> float:
    return CLOCK["fn"]()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, sizes: tuple[int, ...], min_seconds: float = 1.0) -> float:
    """Best achieved FLOP/s of torch.mm over square sizes (2 n^3 FLOPs each)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b, out=c)
        sync(device)
        reps, elapsed = 0, 0.0
        start = now()
        while elapsed < min_seconds:
            t0 = now()
            torch.mm(a, b, out=c)
            sync(device)
            dt = now() - t0
            best = max(best, 2 * n**3 / dt)
            reps += 1
            elapsed = now() - start
    return best


class Stepper:
    """One optimizer step of a model on fixed inputs (MSE to a fixed target)."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        inputs: dict,
        target: torch.Tensor,
        device: str,
        dtype: torch.dtype,
        lr: float = 1e-4,
    ):
        self.name = name
        self.model = model.to(device).train()
        self.inputs = inputs
        self.target = target
        self.device = device
        self.dtype = dtype
        # Same fused AdamW for every model: the optimizer is part of the step, not what is compared.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, fused=True)
        self.times: list[float] = []

    def step(self) -> float:
        sync(self.device)
        t0 = now()
        with torch.autocast(self.device.split(":")[0], dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.model(**self.inputs)
            out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)
        loss = (out.float() - self.target).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(self.device)
        dt = now() - t0
        self.times.append(dt)
        return dt


def _nonzero_init(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb zero-initialised weights so no kernel can shortcut on zeros (both models treated alike)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def run_pair(ours: Stepper, theirs: Stepper | None, warmup: int, iters: int, probe) -> list[float]:
    """Alternate ours / theirs; before each pair take a short matmul-peak probe (load on a shared box drifts)."""
    for _ in range(warmup):
        ours.step()
        if theirs is not None:
            theirs.step()
    ours.times.clear()
    if theirs is not None:
        theirs.times.clear()
    probes = []
    for _ in range(iters):
        probes.append(probe())
        ours.step()
        if theirs is not None:
            theirs.step()
    return probes


def report(
    label: str, s: Stepper, batch: int, train_flops: int, peak: float, probes: list[float]
) -> tuple[float, float]:
    best, med = min(s.times), statistics.median(s.times)
    rate = train_flops * batch / best
    # Per-iteration fraction against the peak probed right before that step (robust to drifting load).
    local = max(train_flops * batch / t / p for t, p in zip(s.times, probes))
    print(
        f"  {label:<34} step {best * 1e3:8.1f} ms (median {med * 1e3:8.1f})  {batch / best:7.2f} img/s  "
        f"{rate / 1e9:7.1f} GFLOP/s  {rate / peak:6.3f} of peak  ({local:5.3f} of the adjacent probe)"
    )
    return best, med


def _transformer_shape(cfg) -> dict:
    """The size arguments diffusers' DiT and SD3 transformers share, from our config."""
    return {
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "num_layers": cfg.depth,
        "sample_size": cfg.input_size,
        "patch_size": cfg.patch_size,
    }


def _run_and_compare(args, ours, theirs, batch: int, train_flops: float, peak: float, flops_note: str) -> None:
    """Time ours and theirs (None: ours only) alternately, report each and the step-time ratio."""
    probes = run_pair(ours, theirs, args.warmup, args.iters, args.probe)
    print(f"  train FLOPs/img ({flops_note}): {train_flops / 1e9:.2f} GFLOP, batch {batch}")
    o_best, o_med = report(ours.name, ours, batch, train_flops, peak, probes)
    if theirs is not None:
        d_best, d_med = report(theirs.name, theirs, batch, train_flops, peak, probes)
        print(f"  step-time ratio ours/diffusers: {o_best / d_best:.3f} (best)  {o_med / d_med:.3f} (median)")


def bench_dit(args, device, dtype, peak) -> None:
    cfg = resolve_config(args.dit, input_size=args.latent_size)
    b = args.batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g).to(device)
    t = torch.rand(b, generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (b,), generator=g).to(device)
    target = torch.randn(x.shape, generator=g).to(device)
    ours_model = build_model(cfg)
    _nonzero_init(ours_model)
    ours = Stepper(f"ours {args.dit}", ours_model, {"x": x, "t": t, "y": y}, target, device, dtype)
    theirs = None
    if not args.skip_diffusers:
        from diffusers import DiTTransformer2DModel

        dm = DiTTransformer2DModel(**_transformer_shape(cfg), num_embeds_ada_norm=cfg.num_classes)
        _nonzero_init(dm)
        # diffusers embeds the raw timestep; same sinusoidal input as our 1000 t.
        theirs = Stepper(
            "diffusers DiTTransformer2DModel",
            dm,
            {"hidden_states": x, "timestep": t * 1000, "class_labels": y},
            target,
            device,
            dtype,
        )
        p_ours = sum(p.numel() for p in ours_model.parameters())
        p_theirs = sum(p.numel() for p in dm.parameters())
        print(
            f"  params: ours {p_ours / 1e6:.2f} M, diffusers {p_theirs / 1e6:.2f} M "
            "(diffusers repeats the timestep/label embedder in every block)"
        )
    tf = flops_summary(cfg)["train_flops_per_image"]
    _run_and_compare(args, ours, theirs, b, tf, peak, "analytic, 6 x fwd MACs")


def bench_mmdit(args, device, dtype, peak) -> None:
    cfg = resolve_config(
        args.mmdit,
        input_size=args.latent_size,
        text_dim=args.text_dim,
        pooled_dim=args.text_dim,
        max_text_len=args.text_tokens,
    )
    b, L = args.batch, args.text_tokens
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g).to(device)
    t = torch.rand(b, generator=g).to(device)
    emb = torch.randn(b, L, cfg.text_dim, generator=g).to(device)
    pooled = torch.randn(b, cfg.pooled_dim, generator=g).to(device)
    mask = torch.ones(b, L, dtype=torch.bool, device=device)  # diffusers' SD3 has no text mask: compare unpadded
    target = torch.randn(x.shape, generator=g).to(device)
    ours_model = build_model(cfg)
    _nonzero_init(ours_model)
    ours = Stepper(
        f"ours {args.mmdit}",
        ours_model,
        {"x": x, "t": t, "text_emb": emb, "text_mask": mask, "text_pooled": pooled},
        target,
        device,
        dtype,
    )
    theirs = None
    if not args.skip_diffusers:
        from diffusers import SD3Transformer2DModel

        dm = SD3Transformer2DModel(
            **_transformer_shape(cfg),
            joint_attention_dim=cfg.text_dim,
            caption_projection_dim=cfg.hidden_size,
            pooled_projection_dim=cfg.pooled_dim,
            pos_embed_max_size=cfg.input_size // cfg.patch_size,
            qk_norm="rms_norm",
        )
        _nonzero_init(dm)
        theirs = Stepper(
            "diffusers SD3Transformer2DModel",
            dm,
            {"hidden_states": x, "encoder_hidden_states": emb, "pooled_projections": pooled, "timestep": t * 1000},
            target,
            device,
            dtype,
        )
        p_ours = sum(p.numel() for p in ours_model.parameters())
        p_theirs = sum(p.numel() for p in dm.parameters())
        print(f"  params: ours {p_ours / 1e6:.2f} M, diffusers {p_theirs / 1e6:.2f} M")
    tf = flops_summary(cfg, L)["train_flops_per_image"]
    _run_and_compare(args, ours, theirs, b, tf, peak, f"analytic, {L} text tokens")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--dit", default="DiT-S/2")
    p.add_argument("--mmdit", default="MMDiT-d6", help="MM-DiT preset (hidden 64 d, d heads)")
    p.add_argument("--latent-size", type=int, default=32)
    p.add_argument("--text-tokens", type=int, default=77)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--peak-sizes", default="1024,2048")
    p.add_argument(
        "--peak-tflops", type=float, default=0.0, help="use this peak instead of measuring (e.g. spec sheet)"
    )
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--skip-mmdit", action="store_true")
    p.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="wall: perf_counter; cpu: process CPU time (robust to other load; use with --threads 1)",
    )
    args = p.parse_args(argv)
    if args.clock == "cpu":
        CLOCK["fn"] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, DTYPES[args.dtype]
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
        f"clock {args.clock}"
    )
    sizes = tuple(int(s) for s in args.peak_sizes.split(","))
    args.probe = (
        (lambda: args.peak_tflops * 1e12)
        if args.peak_tflops
        else (lambda: matmul_peak(device, dtype, sizes[:1], min_seconds=0.3))
    )
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
        print(f"(a) matmul peak (given): {peak / 1e9:.1f} GFLOP/s")
    else:
        peak = matmul_peak(device, dtype, tuple(int(s) for s in args.peak_sizes.split(",")))
        print(
            f"(a) measured {args.dtype} matmul peak (best torch.mm over n={args.peak_sizes}): {peak / 1e9:.1f} GFLOP/s"
        )
    print(f"(b,c) {args.dit} at latent {args.latent_size}: forward + backward + AdamW(fused) step")
    bench_dit(args, device, dtype, peak)
    if not args.skip_mmdit:
        print(f"(d) {args.mmdit} at latent {args.latent_size}, {args.text_tokens} text tokens of dim {args.text_dim}")
        bench_mmdit(args, device, dtype, peak)
    if not args.peak_tflops:
        # Re-measure: on a shared machine the peak seen at the start may have been depressed by other load.
        again = matmul_peak(device, dtype, tuple(int(s) for s in args.peak_sizes.split(",")))
        print(
            f"(a') matmul peak re-measured after the runs: {again / 1e9:.1f} GFLOP/s "
            f"(fractions above use the first, {peak / 1e9:.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
