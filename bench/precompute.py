"""Benchmark: the precompute's driver memory as the data grows, and its throughput with 2 encoder actors vs 1.

    .venv/bin/python bench/precompute.py [--count 512] [--image-size 32] [--s3]

Each precompute runs as its own driver process (`python -m pipelines.precompute`, as `ray job submit` would run it)
on one shared local Ray (num_cpus=2), so the driver's peak resident memory (VmHWM) is measured alone: the shards are
written by Ray Data write tasks, and only part markers reach the driver, so it should stay flat when the data grows
4x. With --s3 the output, the VAE and the FID feature net live on a moto S3 server on 127.0.0.1 (the cluster setup).
Throughput: rows/s of the encode+write phase with 1 and 2 actors at the larger size, and their ratio (baseline:
1 actor, same run). Encoders: randomly initialised ones of the quickstart's architecture; MiniLM text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _encoders(tmp: Path) -> tuple[str, str]:
    """(vae dir, feature net dir): random ones of the quickstart's shapes (throughput does not need trained ones)."""
    import torch

    from ditcore.metrics.features import BuiltinAttributeNet, save_feature_net
    from pipelines.encoders.train_vae import TrainVAEConfig, build_vae

    torch.manual_seed(0)
    build_vae(TrainVAEConfig(image_size=32)).save_pretrained(str(tmp / "vae"), safe_serialization=True)
    save_feature_net(BuiltinAttributeNet(image_size=32), tmp / "fn")
    return str(tmp / "vae"), str(tmp / "fn")


def _moto(tmp: Path) -> tuple[subprocess.Popen, str]:
    """A moto S3 server on a free loopback port; AWS_* point at it (the drivers inherit them)."""
    import boto3

    from pipelines.infra.ray_runtime import free_port

    port = free_port()
    exe = str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            return proc, "s3://bench"
        except Exception:  # noqa: BLE001 - the server is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_driver(out: str, vae: str, fn: str, count: int, actors: int, args: argparse.Namespace, address: str) -> dict:
    """One precompute in its own driver process; its summary and the driver's peak RSS (MiB)."""
    overrides = [
        f"output={out}",
        f"image_size={args.image_size}",
        "progress=false",
        "source.kind=builtin",
        f"source.count={count}",
        f"source.shard_size={args.shard_size}",
        f"vae.path={vae}",
        f"fid.feature_net={fn}",
        "text.encoder=minilm",
        f"compute.actors={actors}",
        "compute.cpus_per_actor=1",
        f"compute.batch_size={args.batch_size}",
        f"compute.ray_address={address}",
    ]
    code = (
        "import json, resource, sys\nfrom pipelines.precompute.job import run_precompute\n"
        "from pipelines.infra.config_files import load_config\nfrom pipelines.precompute.config import "
        "PrecomputeConfig\ns = run_precompute(load_config(PrecomputeConfig, None, sys.argv[1:]))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('RESULT ' + json.dumps({**s, 'driver_peak_mib': int(hwm) / 1024}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *overrides], cwd=REPO, capture_output=True, text=True, timeout=3600
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"precompute failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=512, help="images of the small run (the large one has 4x)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--s3", action="store_true", help="output, VAE and feature net on a local moto S3 server")
    args = p.parse_args()
    import ray

    from pipelines.infra import storage
    from pipelines.infra.ray_runtime import apply_ray_env

    apply_ray_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    vae, fn = _encoders(tmp)
    moto, root = (None, str(tmp / "out"))
    if args.s3:
        moto, root = _moto(tmp)
        storage.upload_dir(vae, f"{root}/encoders/vae")
        storage.upload_dir(fn, f"{root}/encoders/fn")
        vae, fn = f"{root}/encoders/vae", f"{root}/encoders/fn"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    print(
        f"bench/precompute: built-in images at {args.image_size} px, shards of {args.shard_size}, batch "
        f"{args.batch_size}; storage {'moto S3 (loopback)' if args.s3 else 'local'}; 2 CPUs, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    rows = []
    try:
        for count, actors in ((args.count, 1), (4 * args.count, 1), (4 * args.count, 2)):
            s = run_driver(f"{root}/run-{count}-{actors}", vae, fn, count, actors, args, address)
            rows.append({"count": count, "actors": actors, **s})
            print(
                f"  {count:6d} images, {actors} actor(s): driver peak {s['driver_peak_mib']:7.1f} MiB, "
                f"{s['rows_per_s']:7.1f} rows/s ({s['run_seconds']:.1f} s), written {s['written']}",
                flush=True,
            )
    finally:
        ray.shutdown()
        if moto is not None:
            moto.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    small, big1, big2 = rows
    print(
        f"driver peak memory, 4x the data: {big1['driver_peak_mib'] / small['driver_peak_mib']:.3f}x "
        f"({small['driver_peak_mib']:.1f} -> {big1['driver_peak_mib']:.1f} MiB)"
    )
    print(
        f"throughput, 2 actors vs 1 (baseline) at {big1['count']} images: "
        f"{big2['rows_per_s'] / big1['rows_per_s']:.2f}x ({big1['rows_per_s']:.1f} -> {big2['rows_per_s']:.1f} rows/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
