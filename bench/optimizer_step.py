"""AdamW step time: torch's default implementation vs the fused kernel, and the share of a whole training step.

On CPU torch's default AdamW is the per-tensor loop (foreach is a CUDA default); `fused=True` updates every
parameter in one call. The training loop (jobs/train/loop.py) uses the fused kernel. For each model this prints
the best-of-reps time of one optimizer step with each implementation (the default is the baseline), their ratio,
and one whole training step (forward, backward, clipping, the fused AdamW) at the given batch, so the saving can be
read as a share of the step. Inputs are random, shaped like the built-in data (latent 4x8x8, 32 text tokens of 384).

    python bench/optimizer_step.py [--batch 32] [--steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ditcore.models import build_model  # noqa: E402

#: the quickstart grid's models (configs/sweep/tiny.yaml)
MODELS = [
    ("MMDiT-d1", {}),
    ("MMDiT-d2", {"depth": 2, "hidden_size": 96, "num_heads": 2}),
    ("MMDiT-d2", {}),
    ("MMDiT-d3", {}),
]


def per_call_ms(fn, steps: int, reps: int = 3) -> float:
    """Best over `reps` of the mean time of `steps` calls, in ms."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="batch of the whole-step timing")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per timing")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    header = ("model", "tensors", "params", "default ms", "fused ms", "ratio", "step ms")
    print(f"{header[0]:28s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header[1:], (7, 9, 10, 9, 6, 8))))
    for name, overrides in MODELS:
        model = build_model(name, input_size=8, in_channels=4, **overrides)
        params = list(model.parameters())
        for q in params:
            q.grad = torch.randn(q.shape, generator=g) * 1e-3
        times = {}
        for fused in (None, True):  # None: torch's default (the baseline)
            opt = torch.optim.AdamW(model.param_groups(1e-3, 0.0), lr=1e-3, fused=fused)
            opt.step()
            times[fused] = per_call_ms(opt.step, args.steps)
        b = args.batch
        inputs = {
            "x": torch.randn(b, 4, 8, 8, generator=g),
            "t": torch.rand(b, generator=g),
            "text_emb": torch.randn(b, 32, 384, generator=g),
            "text_mask": torch.ones(b, 32, dtype=torch.bool),
            "text_pooled": torch.randn(b, 384, generator=g),
        }
        target = torch.randn(b, 4, 8, 8, generator=g)

        def train_step() -> None:
            loss = (model(**inputs) - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        train_step()
        step_ms = per_call_ms(train_step, max(5, args.steps // 10))
        label = name + ("" if not overrides else f" d{overrides['depth']} w{overrides['hidden_size']}")
        print(
            f"{label:28s} {len(params):7d} {sum(q.numel() for q in params):9,d} {times[None]:10.3f} "
            f"{times[True]:9.3f} {times[None] / times[True]:6.2f} {step_ms:8.2f}"
        )
    print(
        "ratio: default / fused AdamW step time. step ms: one training step with the fused AdamW at batch "
        f"{args.batch}; the default would add (default ms - fused ms) to it."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
