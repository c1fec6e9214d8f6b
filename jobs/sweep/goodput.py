"""Goodput of a sweep: the share of the machine's compute that went into training steps, and where the rest went.

    goodput = training FLOPs computed / (wall time x machine peak FLOP/s)

On CPUs the machine peak is measured in the same run (fp32 matmul rate of one thread, `measure_cpu_peak_flops`,
times the cluster's CPUs), so the figure is checkable on any machine: the sweep measures it before and after its
trials and divides by the higher reading (`peak_flops_measured` keeps both). On GPUs (`run.use_gpu`) it is the
peak the trials' workers used for their MFU (`run.peak_flops`, else the device's datasheet bf16 peak,
`jobs.train.metrics.GPU_PEAK_FLOPS`) per GPU, times the cluster's GPUs (`peak_source` says which).
Wall time is divided, in device-seconds (CPU-seconds, or GPU-seconds on GPUs), into what every trial spent on
start-up (Ray Train worker group and data set), setup (models, restores), data (waiting for batches), train steps,
checkpoints (+ validation, logging) and evaluation (on CPUs with the CPU-seconds of idle CPUs it reserved,
`eval_extra_cpu_s`); what no trial used is idle.
"""

from __future__ import annotations

from typing import Any, Optional

PHASES = ("startup_s", "setup_s", "data_s", "step_s", "checkpoint_s", "eval_s")


def measure_machine_peak(num_cpus: float) -> float:
    """Measured fp32 matmul FLOP/s of one thread x `num_cpus` (the CPU machine's peak)."""
    import torch

    from jobs.train.metrics import measure_cpu_peak_flops

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_core = max(measure_cpu_peak_flops() for _ in range(3))
    finally:
        torch.set_num_threads(threads)
    return per_core * float(num_cpus)


def gpu_peak(records: list[dict[str, Any]], num_gpus: float) -> Optional[float]:
    """The cluster's GPU peak: the per-GPU peak the trials' workers divided their MFU by (a record's `peak_flops` is
    its worker group's, over its `gpus`), times `num_gpus`; None when no trial recorded one."""
    per_gpu = [float(r["peak_flops"]) / float(r["gpus"]) for r in records if r.get("peak_flops") and r.get("gpus")]
    return max(per_gpu) * float(num_gpus) if per_gpu and num_gpus > 0 else None


def sweep_goodput(
    records: list[dict[str, Any]],
    *,
    wall_s: float,
    num_cpus: float,
    peak_flops: Optional[float],
    peak_flops_measured: Optional[list[float]] = None,
    num_gpus: float = 0.0,
    peak_source: str = "measured",
) -> dict[str, Any]:
    """{"goodput", "train_flops", "wall_s", "peak_flops", "peak_source", "num_cpus", "num_gpus", "device",
    "time": {phase: device-s, "idle_s"}, "time_share": {phase: fraction of wall x devices}} over the trials that ran
    (records with "timing"). `num_gpus` > 0: a GPU sweep, timed in GPU-seconds (each record's "gpus")."""
    ran = [r for r in records if r.get("timing")]
    flops = float(sum(r.get("train_flops") or 0.0 for r in ran))
    on_gpu = num_gpus > 0
    capacity = max(wall_s, 1e-9) * max(num_gpus if on_gpu else num_cpus, 1e-9)
    time: dict[str, float] = {k: 0.0 for k in PHASES}
    for r in ran:
        share = float(r.get("gpus") or 1.0) if on_gpu else float(r.get("cpus") or 1.0)
        for k in PHASES:
            time[k] += share * float(r["timing"].get(k, 0.0))
        if not on_gpu:
            time["eval_s"] += float(r["timing"].get("eval_extra_cpu_s", 0.0))  # idle CPUs evaluation borrowed
    time["idle_s"] = max(0.0, capacity - sum(time.values()))
    peak = float(peak_flops) if peak_flops else None
    return {
        "goodput": flops / (max(wall_s, 1e-9) * peak) if peak else None,
        "train_flops": flops,
        "wall_s": float(wall_s),
        "peak_flops": peak,
        "peak_flops_measured": [float(p) for p in (peak_flops_measured or ([peak] if peak else []))],
        "peak_source": peak_source,
        "num_cpus": float(num_cpus),
        "num_gpus": float(num_gpus),
        "device": "GPU" if on_gpu else "CPU",
        "trials": len(ran),
        "time": {k: round(v, 2) for k, v in time.items()},
        "time_share": {k: round(v / capacity, 4) for k, v in time.items()},
    }


def format_goodput(g: Optional[dict[str, Any]]) -> str:
    """One human line: goodput and the shares of the wall time."""
    if not g or g.get("goodput") is None:
        return "goodput: not measured"
    shares = ", ".join(f"{k[:-2]} {v:.0%}" for k, v in g["time_share"].items())
    if g.get("device") == "GPU":
        return (
            f"goodput {g['goodput']:.1%} ({g['train_flops']:.3g} training FLOPs in {g['wall_s']:.0f} s on "
            f"{g['num_gpus']:g} GPUs x {g['peak_flops'] / g['num_gpus'] / 1e12:.0f} TFLOP/s, {g['peak_source']}); "
            f"time: {shares}"
        )
    per_core = lambda f: f"{f / g['num_cpus'] / 1e9:.0f}"  # noqa: E731
    readings = g.get("peak_flops_measured") or [g["peak_flops"]]
    measured = f"measured, best of {'/'.join(per_core(f) for f in readings)}" if len(readings) > 1 else "measured"
    return (
        f"goodput {g['goodput']:.1%} ({g['train_flops']:.3g} training FLOPs in {g['wall_s']:.0f} s on "
        f"{g['num_cpus']:g} CPUs x {per_core(g['peak_flops'])} GFLOP/s {measured}); time: {shares}"
    )
