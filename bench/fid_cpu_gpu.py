"""FID of one checkpoint on the CPU path and on the CUDA path: the same samples, seeds and feature net.

Runs the evaluation that sweeps run (`jobs.evaluation.fid.evaluate_checkpoint`, sampling in the process, as a Ray
evaluation actor does) once per device, each in its own process: `cpu` sees no CUDA device (CUDA_VISIBLE_DEVICES
empty: fp32), `cuda` the first one (bf16 autocast, TF32). Prints each FID with its bootstrap standard error, the
attribute accuracy on built-in data, images/s (model load included), and the CUDA FID's difference from the CPU
FID in units of the CPU FID's standard error. Needs no Ray. The CPU result can come from another machine: `--out`
writes the results as JSON there, `--cpu-json` reads them here.

    python bench/fid_cpu_gpu.py --checkpoint RUN/checkpoints/step_X --data outputs/latents/builtin \\
        --num-samples 2048 --sampler dpmpp-2m --steps 8 --guidance 2.0 [--devices cpu,cuda] [--threads 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KEYS = ("fid", "fid_se", "fid_ci", "attr_acc", "num_samples", "fid_network", "feature_dim", "sampling_device")


def one(args: argparse.Namespace) -> dict:
    """Evaluate in this process (on CUDA when torch sees a device) and return the evaluation's numbers."""
    import torch

    from jobs.evaluation.fid import evaluate_checkpoint

    t0 = time.perf_counter()
    r = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        num_actors=0,
        threads=args.threads,
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        n_boot=args.n_boot,
    )
    sec = time.perf_counter() - t0
    cuda = torch.cuda.is_available()
    return {
        **{k: r.get(k) for k in KEYS},
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": "bf16 autocast" if r["sampling_device"].endswith("bf16") else "fp32",
        "torch": torch.__version__,
        "seconds": sec,
        "images_per_s": args.num_samples / sec,
    }


def run_on(device: str, args: argparse.Namespace) -> dict:
    """`one` in a child process that sees CUDA (device "cuda") or not ("cpu")."""
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, os.path.abspath(__file__), "--_one", *sys.argv[1:]]
    cmd += ["--checkpoint", args.checkpoint, "--data", args.data]  # resolved here (the last occurrence wins)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{device} evaluation failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(cpu: dict, other: dict) -> dict:
    """The other device's FID minus the CPU FID, in FID units and in the CPU FID's standard errors."""
    diff = other["fid"] - cpu["fid"]
    se = cpu.get("fid_se") or float("nan")
    return {"fid_diff": diff, "fid_diff_in_se": diff / se, "rel_diff": diff / cpu["fid"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint step directory")
    ap.add_argument("--data", required=True, help="the data set's manifest directory (FID stats, feature net)")
    ap.add_argument("--num-samples", type=int, default=2048)
    ap.add_argument("--sampler", default="dpmpp-2m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=50, help="bootstrap resamples for each FID's standard error")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the CPU run")
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated: cpu, cuda (cuda skipped without CUDA)")
    ap.add_argument("--cpu-json", default=None, help="take the CPU result from this file (another machine's --out)")
    ap.add_argument("--out", default=None, help="write the results here as JSON")
    ap.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n_boot < 2:
        ap.error(f"--n-boot: at least 2 resamples give a standard error, got {args.n_boot}")
    # the per-device runs are child processes started in the repository root: local paths as given from here
    args.checkpoint, args.data = (p if "://" in p else os.path.abspath(p) for p in (args.checkpoint, args.data))
    if args._one:
        print(json.dumps(one(args)))
        return 0
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    bad = sorted(set(devices) - {"cpu", "cuda"})
    if bad:
        ap.error(f"--devices: unknown {bad}; use cpu and/or cuda")
    import torch

    if "cuda" in devices and not torch.cuda.is_available():
        print("fid_cpu_gpu: no CUDA device (torch.cuda.is_available() is False); the cuda run is skipped.")
        devices.remove("cuda")
    results: dict = {}
    if args.cpu_json:
        with open(args.cpu_json) as f:
            results["cpu_elsewhere"] = json.load(f)["cpu"]
    for d in devices:
        results[d] = run_on(d, args)
    print(f"checkpoint {args.checkpoint}: {args.num_samples} samples, {args.sampler} {args.steps} steps, "
          f"guidance {args.guidance}, seed {args.seed}")  # fmt: skip
    for name, r in results.items():
        acc = "" if r.get("attr_acc") is None else f"  attr_acc {r['attr_acc']:.3f}"
        print(
            f"  {name:13s} FID {r['fid']:9.3f} +- {r['fid_se']:.3f} (bootstrap se){acc}  {r['images_per_s']:7.1f} img/s"
            f"  [{r['device']}, {r['dtype']}, torch {r['torch']}]"
        )
    pairs = [("cuda", "cpu"), ("cuda", "cpu_elsewhere"), ("cpu", "cpu_elsewhere")]
    for name, base in [(a, b) for a, b in pairs if a in results and b in results]:
        c = results[f"{name}_vs_{base}"] = compare(results[base], results[name])
        print(f"  {name} - {base}: {c['fid_diff']:+.3f} FID = {c['fid_diff_in_se']:+.2f} se ({c['rel_diff']:+.2%})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
