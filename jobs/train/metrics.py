"""Training metrics: throughput and MFU against a measured (CPU) or datasheet (GPU) peak, logged by rank 0.

MFU = images/s x training FLOPs per image / peak FLOP/s of the workers (FLOPs counted analytically:
multiply-add = 2 FLOPs, training step = 3 x forward). A CPU's peak is its measured fp32 matmul rate.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from jobs.train.config import TrainConfig

# Peak dense bf16 FLOP/s per device used for MFU when run.peak_flops is not given (vendor datasheets).
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
}


def measure_cpu_peak_flops(n: int = 512, reps: int = 5) -> float:
    """Measured fp32 matmul FLOP/s of this process (the CPU 'peak' for MFU)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / max(time.perf_counter() - t0, 1e-9))
    return best


def peak_flops_per_worker(cfg: TrainConfig, device: torch.device) -> float:
    """Peak FLOP/s of one worker: run.peak_flops, else the GPU datasheet table, else the measured CPU rate."""
    if cfg.run.peak_flops:
        return float(cfg.run.peak_flops)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK_FLOPS.items():
            if key in name:
                return val
    return measure_cpu_peak_flops()


class RunTracker:
    """Rank-0 MLflow logging to the run's own run id (safe across restarts); silent elsewhere."""

    def __init__(self, run_id: Optional[str], tracking_uri: Optional[str], rank: int) -> None:
        self.client = None
        self.run_id = run_id
        if rank == 0 and run_id and tracking_uri:
            from pipelines.infra.tracking import client

            self.client = client(tracking_uri, check=False)

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Log the finite values at `step`."""
        if self.client is not None:
            from pipelines.infra.tracking import log_metrics

            log_metrics(self.client, self.run_id, values, step)

    def fail(self, reason: str) -> None:
        """Mark the run FAILED with the reason tag."""
        if self.client is not None:
            from pipelines.infra.tracking import end_run

            end_run(self.client, self.run_id, "failed", reason)
