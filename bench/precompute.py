"""Benchmark: images/s of the Ray Data precompute against a plain single-process loop over the same encoder.

    .venv/bin/python bench/precompute.py [--count 1024] [--image-size 32] [--batch-size 32]

Baseline ("plain"): one Python process, torch limited to 1 thread, the very same stages and code as the
pipeline (render -> decode/crop -> `pipelines.encode.Encoder` -> `ShardWriter` parquet commits), no Ray.
Then `run_precompute` on a local Ray (num_cpus=2) with an encoder actor pool of 1 and of 2 actors
(1 CPU, 1 torch thread each). All three write the same data set shape to fresh directories.

Figures: end-to-end rate (model loading and actor start-up included) and steady rate (after the first
batch: what a long job converges to). Goal: 1 actor >= 0.9x plain; 2 actors close to 2x on 2 cores.
Encoders: outputs/vae and outputs/feature_net when they exist (the quickstart ones), else randomly
initialised ones of the same architecture; MiniLM text.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)


def _encoders(tmp: Path) -> tuple[str, str]:
    """(vae dir, feature net dir): the trained quickstart ones if present, else random ones of the same shape."""
    import torch

    vae, fn = REPO / "outputs" / "vae", REPO / "outputs" / "feature_net"
    if not (vae / "config.json").is_file():
        from diffusers import AutoencoderKL

        from pipelines.encoders.train_vae import TrainVAEConfig

        c = TrainVAEConfig()
        torch.manual_seed(0)
        n = len(c.block_out_channels)
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=c.latent_channels, layers_per_block=c.layers_per_block,
                      norm_num_groups=c.norm_num_groups, block_out_channels=tuple(c.block_out_channels),
                      down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                      sample_size=c.image_size).save_pretrained(tmp / "vae")
        vae = tmp / "vae"
    if not (fn / "config.json").is_file():
        from ditcore.metrics.features import BuiltinAttributeNet, save_feature_net

        torch.manual_seed(0)
        fn = save_feature_net(BuiltinAttributeNet(), tmp / "fn")
    return str(vae), str(fn)


def _config(out: Path, vae: str, fn: str, args, actors: int):
    from ditcore.config import from_dict
    from pipelines.precompute.job import PrecomputeConfig

    return from_dict(PrecomputeConfig, {
        "output": str(out), "image_size": args.image_size, "progress": False,
        "source": {"kind": "builtin", "count": args.count, "shard_size": args.shard_size},
        "vae": {"path": vae}, "fid": {"feature_net": fn}, "text": {"encoder": "minilm"},
        "compute": {"actors": actors, "batch_size": args.batch_size, "cpus_per_actor": 1, "decode_cpus": 1},
    })


def plain_loop(cfg) -> dict:
    """The baseline: same read/decode/encode/write code in one process, 1 torch thread, no Ray."""
    import torch

    from ditcore.config import to_dict
    from pipelines.precompute.encode import Encoder, decode_batch
    from pipelines.precompute.job import ShardWriter, validate
    from pipelines.sources import read_shard

    torch.set_num_threads(1)
    t0 = time.monotonic()
    plan, _ = validate(cfg)
    enc = Encoder(vae=to_dict(cfg.vae), text=to_dict(cfg.text), feature_net=cfg.fid.feature_net,
                  image_size=cfg.image_size, device="cpu", dtype="float32", num_threads=1,
                  batch_size=cfg.compute.batch_size)
    writer = ShardWriter(cfg.output, plan.has_labels, True, True)
    t1 = time.monotonic()
    for shard in plan.shards:  # one shard per encoder call, as the Ray actors get them
        writer.add(enc(decode_batch(read_shard(shard, cfg.source, plan.classes), cfg.image_size, True)))
    t2 = time.monotonic()
    assert writer.rows_done == cfg.source.count
    return {"rows": writer.rows_done, "end_to_end": writer.rows_done / (t2 - t0), "steady": writer.rows_done / (t2 - t1),
            "seconds": t2 - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=128)
    args = p.parse_args()
    import ray

    from pipelines.precompute.job import run_precompute

    tmp = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    vae, fn = _encoders(tmp)
    print(f"bench/precompute: {args.count} built-in images at {args.image_size} px, batch {args.batch_size}, "
          f"VAE {vae}, feature net {fn}, text minilm; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    base = plain_loop(_config(tmp / "plain", vae, fn, args, 1))
    print(f"  plain loop (1 process, 1 thread) : {base['end_to_end']:7.1f} img/s end-to-end, "
          f"{base['steady']:7.1f} img/s steady  ({base['seconds']:.1f} s)")
    results = {"plain": base}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for actors in (1, 2):
            s = run_precompute(_config(tmp / f"ray{actors}", vae, fn, args, actors))
            assert s["written"] == args.count, s
            e2e, steady = s["rows_per_s"], s["steady_rows_per_s"] or 0.0
            results[f"ray{actors}"] = s
            print(f"  ray data, {actors} actor{'s' if actors > 1 else ' '}           : {e2e:7.1f} img/s end-to-end, "
                  f"{steady:7.1f} img/s steady  ({s['run_seconds']:.1f} s)  "
                  f"= {e2e / base['end_to_end']:.2f}x / {steady / base['steady']:.2f}x plain")
    finally:
        ray.shutdown()
    print(f"  load average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps({k: {kk: v[kk] for kk in v if kk in ("end_to_end", "steady", "rows_per_s", "steady_rows_per_s")}
                      for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
