"""`ditscale quickstart`: the whole pipeline on the embedded defaults, one command, on a laptop.

built-in data -> small VAE -> FID feature net -> precompute (VAE latents + MiniLM text embeddings)
-> 3x3 sweep (3 tiny MM-DiT sizes x 3 compute budgets) on a local Ray, FID at every point
-> scaling-law fit -> promote the champion -> deploy it on Ray Serve -> generate images over HTTP
-> report (Markdown: scaling plot, fitted law with intervals, a sample grid per model, the trial table).

Each stage writes a marker `<out>/stages/<stage>.json` holding the hash of its resolved config (which
includes the results of the stages it depends on); a re-run reuses every stage whose marker matches and
whose outputs still exist, and `--force` reruns everything. Everything is tracked in a local MLflow
store (`<out>/mlflow.db`, artifacts in `<out>/mlruns`).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]

# Prompts the served champion draws over HTTP and the per-model sample grids use (the built-in grammar).
PROMPTS = [
    "a large red circle",
    "a small blue square at the top left",
    "a green triangle at the bottom right",
    "a large yellow square and a small red circle",
]
GUIDANCE = 2.0  # classifier-free guidance of the served requests and the grids


# ----------------------------------------------------------------------------------------------------------
# Modes: the full quickstart (<= 15 min on 2 cores) and --tiny (<= 3 min, what the README test runs).


@dataclass
class Mode:
    """Sizes of every stage for one quickstart mode."""

    name: str
    image_size: int
    vae: dict[str, Any]  # overrides of TrainVAEConfig
    features: dict[str, Any]  # overrides of TrainFeaturesConfig
    precompute: list[str]  # k=v overrides of configs/precompute/builtin.yaml
    sweep: list[str]  # k=v overrides of configs/sweep/tiny.yaml
    serve_steps: int
    grid_images: int  # images per model in the report's sample grids
    notes: dict[str, Any] = field(default_factory=dict)


def make_mode(tiny: bool) -> Mode:
    """The settings of the tiny or the full quickstart."""
    if tiny:
        # A smoke run of every stage: numbers are noisy, the plumbing is the same as the full run.
        return Mode(
            name="tiny", image_size=32,
            vae={"steps": 60, "batch_size": 16, "block_out_channels": [16, 16, 32], "scale_images": 128,
                 "eval_images": 64},
            features={"steps": 100, "batch_size": 32, "eval_images": 200},
            precompute=["source.count=256", "source.shard_size=128", "compute.batch_size=64"],
            # Batch 16 so that one step of the largest model (3.6e8 FLOPs/image) fits the smallest budget.
            sweep=["budgets=[2e10,5e10,1.2e11]", "base.data.batch_size=16",
                   "base.eval.num_samples=64",
                   "base.eval.steps=8", "base.data.val_samples=32", "base.optim.warmup_steps=5"],
            serve_steps=8, grid_images=4, notes={"n_boot": 50},
        )
    return Mode(
        name="full", image_size=32,
        vae={"steps": 600, "scale_images": 256, "eval_images": 128},
        features={"steps": 600, "eval_images": 500},
        precompute=["source.count=2048"],
        sweep=[],
        serve_steps=20, grid_images=8, notes={"n_boot": 200},
    )


# ----------------------------------------------------------------------------------------------------------
# Stage runner: banners with elapsed time, markers with config hashes, reuse.


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


@dataclass
class Stage:
    """One step of the quickstart: `run(ctx) -> result` (JSON-able); `config(ctx)` is what its hash covers."""

    name: str
    title: str
    config: Callable[["Context"], dict]
    run: Callable[["Context"], dict]
    outputs: Callable[[dict], list[str]] = lambda result: []  # paths that must still exist to reuse it


class Context:
    """Shared state of one quickstart run: output dir, mode, results of finished stages, Ray/Serve handles."""

    def __init__(self, out: Path, mode: Mode, t0: float):
        self.out = out
        self.mode = mode
        self.t0 = t0
        self.results: dict[str, dict] = {}
        self.hashes: dict[str, str] = {}
        self.ray: LocalRay | None = None
        self.serve_app: str | None = None  # the Serve application the serve stage runs on self.ray

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def log(self, msg: str) -> None:
        print(f"      {msg}", flush=True)

    def elapsed(self) -> str:
        return _fmt_s(time.monotonic() - self.t0)

    def ensure_ray(self) -> None:
        """Start (once) the local Ray head this quickstart owns and connect to it."""
        if self.ray is None:
            self.ray = LocalRay(self.path("logs"))
            self.log(f"starting a local Ray head ({self.ray.num_cpus} CPUs); dashboard {self.ray.dashboard_url}")
            self.ray.start()

    def stop_ray(self) -> None:
        """Disconnect from and stop the Ray head this quickstart started (nothing else)."""
        if self.ray is not None:
            self.ray.stop()
            self.ray = None


class LocalRay:
    """A Ray head on this machine, owned by the quickstart: `ray start --head --block` in its own session.

    Unlike a bare `ray.init()`, every process of this cluster (workers, Train/Tune internals, Serve's
    controller and replicas) gets RAY_ADDRESS in its environment, so nothing has to guess which of
    several local Ray instances is meant; every port is chosen free; and it is stopped by signalling
    exactly its own processes, never with a global `ray stop`.
    """

    def __init__(self, log_dir: Path, num_cpus: int | None = None):
        self.num_cpus = num_cpus or max(2, _cores())
        self.log_dir = log_dir
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.proc: subprocess.Popen | None = None
        self.temp_dir: str | None = None

    def start(self, timeout: float = 300.0) -> None:
        """Start the head, connect this process to it, and export RAY_ADDRESS for everything started later."""
        import tempfile

        import ray

        # Ray's unix socket paths must stay short: /tmp/rayXXXX rather than a deep output directory.
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        os.environ["RAY_ADDRESS"] = self.address
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [str(ray_bin), "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--port={self.gcs_port}", f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
               f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}"]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PATH=f"{ray_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        with open(self.log_dir / "ray-head.log", "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {self.proc.returncode}; see {self.log_dir / 'ray-head.log'}")
            try:
                ray.init(address=self.address, logging_level="WARNING", log_to_driver=True)
                return
            except (ConnectionError, TimeoutError, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the local Ray head at {self.address} did not come up in {timeout:.0f}s: {exc}")
                time.sleep(1.0)

    def stop(self, grace: float = 2.0) -> None:
        """Disconnect, SIGTERM `ray start --block`, and SIGKILL what is left of its session after `grace` s.

        The quickstart stops Ray only once everything it needs is on disk (results, MLflow, logs), so nothing
        is worth waiting for: an idle head is gone about 2-3 s after SIGTERM, but at the end of a measured tiny
        quickstart (after the sweep) waiting for every process of the session took about 30 s.
        """
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        if os.environ.get("RAY_ADDRESS") == self.address:
            del os.environ["RAY_ADDRESS"]
        if self.proc is None:
            return
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _session_pids(sid):
            time.sleep(0.1)
        for pid in _session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _session_pids(sid):
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (a `ray start --block` leader and everything it spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)



def _marker(ctx: Context, stage: Stage) -> Path:
    return ctx.path("stages", f"{stage.name}.json")


def run_stages(ctx: Context, stages: list[Stage], force: bool) -> None:
    """Run (or reuse) every stage in order, printing a banner with the elapsed time for each."""
    n = len(stages)
    for i, stage in enumerate(stages, 1):
        cfg = stage.config(ctx)
        digest = _hash({"stage": stage.name, "config": cfg, "upstream": ctx.hashes})
        marker = _marker(ctx, stage)
        prev = json.loads(marker.read_text()) if marker.is_file() else None
        reusable = (not force and prev is not None and prev.get("config_hash") == digest
                    and all(Path(p).exists() for p in stage.outputs(prev["result"])))
        if reusable:
            ctx.results[stage.name] = prev["result"]
            ctx.hashes[stage.name] = digest
            print(f"==> [{i}/{n}] {stage.title}: reused (finished {prev['finished_at']}, "
                  f"took {_fmt_s(prev['seconds'])}, config {digest})   [{ctx.elapsed()}]", flush=True)
            continue
        print(f"\n==> [{i}/{n}] {stage.title}   [{ctx.elapsed()}]", flush=True)
        t = time.monotonic()
        result = stage.run(ctx)
        seconds = time.monotonic() - t
        ctx.results[stage.name] = result
        ctx.hashes[stage.name] = digest
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "stage": stage.name, "config_hash": digest, "config": cfg, "result": result, "seconds": seconds,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2, default=str))
        tmp.replace(marker)
        print(f"    done: {stage.title} in {_fmt_s(seconds)}   [{ctx.elapsed()}]", flush=True)


# ----------------------------------------------------------------------------------------------------------
# The stages.


def _cfg_from(cls: type, data: dict, overrides: list[str] = (), yaml_path: str | None = None) -> Any:
    """A component config from an optional YAML file, a dict and `k=v` overrides (errors name the key)."""
    from ditcore.config import apply_overrides, from_dict
    from pipelines.infra.config_files import read_yaml

    base = read_yaml(yaml_path) if yaml_path else {}
    merged = _deep_merge(base, data)
    return from_dict(cls, apply_overrides(merged, list(overrides)))


def _deep_merge(a: dict, b: dict) -> dict:
    out = json.loads(json.dumps(a or {}))
    for k, v in (b or {}).items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- 1. VAE --------------------------------------------------------------------------------------------


def _vae_config(ctx: Context) -> dict:
    return {"out": str(ctx.path("vae")), "image_size": ctx.mode.image_size, **ctx.mode.vae}


def _vae_run(ctx: Context) -> dict:
    from pipelines.encoders.train_vae import TrainVAEConfig, train_vae

    cfg = _cfg_from(TrainVAEConfig, {**_vae_config(ctx), "threads": _threads()})
    path = train_vae(cfg)
    return {"path": str(path)}


# --- 2. FID feature network ----------------------------------------------------------------------------


def _features_config(ctx: Context) -> dict:
    return {"out": str(ctx.path("features")), "image_size": ctx.mode.image_size, **ctx.mode.features}


def _features_run(ctx: Context) -> dict:
    from pipelines.encoders.train_features import TrainFeaturesConfig, train_feature_net

    cfg = _cfg_from(TrainFeaturesConfig, {**_features_config(ctx), "threads": _threads()})
    path = train_feature_net(cfg)
    return {"path": str(path)}


def _threads() -> int:
    """torch threads for the in-process trainers: every core of the machine (they run alone)."""
    return max(1, _cores())


# --- 3. precompute -------------------------------------------------------------------------------------

PRECOMPUTE_YAML = REPO_ROOT / "configs" / "precompute" / "builtin.yaml"


def _precompute_overrides(ctx: Context) -> list[str]:
    return [
        f"output={ctx.path('latents')}",
        f"image_size={ctx.mode.image_size}",
        f"vae.path={ctx.results['vae']['path']}",
        f"fid.feature_net={ctx.results['features']['path']}",
        "text.encoder=minilm",
        "source.kind=builtin",
        *ctx.mode.precompute,
    ]


def _precompute_config(ctx: Context) -> dict:
    return {"yaml": PRECOMPUTE_YAML.read_text() if PRECOMPUTE_YAML.is_file() else None,
            "overrides": _precompute_overrides(ctx)}


def _precompute_run(ctx: Context) -> dict:
    from pipelines.precompute.job import PrecomputeConfig, format_summary, run_precompute

    out = ctx.path("latents")
    if out.exists():
        shutil.rmtree(out)  # a stale or different data set: this stage's marker did not match
    cfg = _cfg_from(PrecomputeConfig, {}, _precompute_overrides(ctx),
                    str(PRECOMPUTE_YAML) if PRECOMPUTE_YAML.is_file() else None)
    ctx.ensure_ray()
    summary = run_precompute(cfg)
    ctx.log(format_summary(summary))
    return {"path": str(out), "manifest": str(out / "manifest.json"), "summary": _jsonable(summary)}


# --- 4. sweep ------------------------------------------------------------------------------------------

SWEEP_YAML = REPO_ROOT / "configs" / "sweep" / "tiny.yaml"
EXPERIMENT = "ditscale-quickstart"


def _sweep_overrides(ctx: Context) -> list[str]:
    return [
        f"name={ctx.mode.name}",
        f"output={ctx.path('sweeps')}",
        f"base.data.manifest={ctx.results['precompute']['path']}",
        f"mlflow.experiment={EXPERIMENT}-{ctx.mode.name}",
        f"base_config={REPO_ROOT / 'configs' / 'train' / 'tiny.yaml'}",
        *ctx.mode.sweep,
    ]


def _sweep_config(ctx: Context) -> dict:
    return {"yaml": SWEEP_YAML.read_text() if SWEEP_YAML.is_file() else None, "overrides": _sweep_overrides(ctx)}


def _sweep_run(ctx: Context) -> dict:
    from jobs.sweep.driver import format_table, load_sweep_config, run_sweep

    sweep_root = ctx.path("sweeps", ctx.mode.name)
    if sweep_root.exists():
        shutil.rmtree(sweep_root)  # results of another config: start this sweep clean
    cfg = load_sweep_config(str(SWEEP_YAML) if SWEEP_YAML.is_file() else None, _sweep_overrides(ctx))
    n_models, n_budgets = len(cfg.models), len(cfg.budgets)
    ctx.log(f"{n_models} models x {n_budgets} budgets ({', '.join(f'{b:.2g}' for b in sorted(cfg.budgets))} FLOPs), "
            f"mode={cfg.mode}, MLflow experiment {cfg.mlflow.experiment!r}")
    ctx.ensure_ray()
    out = run_sweep(cfg)
    print(format_table(out), flush=True)
    if not out["complete"]:
        missing = [r["name"] for r in out["trials"] if r["status"] == "missing"]
        raise RuntimeError(f"sweep incomplete: trials without a result: {missing} (see the Ray Tune errors above)")
    points = [p for r in out["trials"] for p in r["points"]]
    return {"experiment": out["experiment"], "parent_run_id": out["parent_run_id"], "sweep_dir": out["sweep_dir"],
            "num_points": len(points), "wall_s": out["wall_s"]}


# --- 5. fit --------------------------------------------------------------------------------------------


def _fit_config(ctx: Context) -> dict:
    return {"n_boot": ctx.mode.notes.get("n_boot", 200)}


def _fit_run(ctx: Context) -> dict:
    from jobs.scaling.fit import REPORT_NAME, format_laws, run_fit

    report, out = run_fit(parent_run_id=ctx.results["sweep"]["parent_run_id"], out_dir=str(ctx.path("fit")),
                          n_boot=_fit_config(ctx)["n_boot"])
    laws = format_laws(report)
    print(laws, flush=True)
    return {"dir": str(out), "report": str(out / REPORT_NAME), "laws": laws,
            "plots": sorted(str(p) for p in out.glob("*.png"))}


# --- 6. promote ----------------------------------------------------------------------------------------


def _promote_run(ctx: Context) -> dict:
    from pipelines.infra.tracking import get_client, sweep_points
    from jobs.scaling.promote import promote

    client = get_client()
    parent, points = sweep_points(client, parent_run_id=ctx.results["sweep"]["parent_run_id"])
    res = promote(client, points, extra_tags={"experiment": ctx.results["sweep"]["experiment"],
                                              "parent_run_id": parent.info.run_id})
    ctx.log(f"{'registered' if res['created'] else 'reused'} {res['model_name']} version {res['version']} -> "
            f"alias '{res['alias']}': {res['model']}, FID {res['fid']:.3f}, checkpoint {res['checkpoint']}")
    return _jsonable({k: v for k, v in res.items() if k != "point"})


# --- 7. serve + HTTP -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_config(ctx: Context) -> dict:
    return {"prompts": PROMPTS, "steps": ctx.mode.serve_steps, "guidance": GUIDANCE,
            "version": ctx.results["promote"]["version"]}


def _serve_args(ctx: Context, port: int) -> list[str]:
    """The `ditscale serve` options of the quickstart's deployment: the champion, on a laptop."""
    return ["--champion", "--host", "127.0.0.1", "--port", str(port),
            # One small CPU replica of each deployment, no GPU.
            "--num-gpus", "0", "--set", "Sampler.ray_actor_options.num_cpus=1",
            "--set", "Sampler.autoscaling_config.min_replicas=1", "--set", "Sampler.autoscaling_config.max_replicas=1",
            "--set", "Ingress.autoscaling_config.max_replicas=1",
            "--set", f"Sampler.user_config.default_steps={ctx.mode.serve_steps}",
            # Nothing is in flight at shutdown: stop each replica after 0.1 s instead of Serve's 2 s drain loop.
            "--set", "Sampler.graceful_shutdown_wait_loop_s=0.1", "--set", "Ingress.graceful_shutdown_wait_loop_s=0.1"]


def _serve_run(ctx: Context) -> dict:
    """Deploy the champion on this quickstart's Ray (as `ditscale serve --champion` does), call it over HTTP, stop it."""
    import requests

    from serve.cli.main import deploy, serve_plan

    out = ctx.path("served")
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    logs = ctx.path("logs", "serve")
    ns, plan = serve_plan(_serve_args(ctx, port))
    ctx.ensure_ray()
    ctx.log(f"deploying the champion on Ray Serve at http://127.0.0.1:{port} (Serve logs: {logs})")
    ctx.serve_app = plan["name"]
    try:
        try:
            with _serve_driver_logs(logging.WARNING):  # the stage prints its own lines; Serve's go to `logs`
                url = deploy(plan, num_gpus=ns.num_gpus, ready_timeout=240, logging_config={"logs_dir": str(logs)})
        except Exception as exc:
            raise RuntimeError(f"deploying the champion on Ray Serve failed: {exc}\n{_serve_log_tail(logs)}") from exc
        model = requests.get(f"{url}/v1/model", timeout=60).json()
        ctx.log(f"serving {model.get('checkpoint', '?')}")
        images = []
        for i, prompt in enumerate(PROMPTS):
            body = {"prompt": prompt, "seed": i, "steps": ctx.mode.serve_steps, "guidance": GUIDANCE}
            r = requests.post(f"{url}/v1/generate", json=body, timeout=300)
            if r.status_code != 200 or r.headers.get("content-type", "").split(";")[0] != "image/png":
                raise RuntimeError(f"POST /v1/generate {body} -> HTTP {r.status_code}: {r.text[:500]}")
            path = out / f"{i}.png"
            path.write_bytes(r.content)
            images.append({"prompt": prompt, "seed": i, "path": str(path)})
            ctx.log(f"POST /v1/generate {json.dumps(body)} -> {path.name} ({len(r.content)} bytes)")
        # Several images in one request come back as base64 PNGs in JSON with the settings used.
        r = requests.post(f"{url}/v1/generate", json={"prompt": PROMPTS[0], "num_images": 4, "seed": 100,
                                                       "format": "json"}, timeout=300)
        r.raise_for_status()
        multi = r.json()
        import base64

        for j, img in enumerate(multi["images"]):
            path = out / f"multi_{j}.png"
            path.write_bytes(base64.b64decode(img["png_base64"]))
            images.append({"prompt": PROMPTS[0], "seed": img["seed"], "path": str(path)})
        ctx.log(f"POST /v1/generate num_images=4 format=json -> seeds {[i['seed'] for i in multi['images']]}")
    finally:
        _stop_serve(ctx)
        ctx.stop_ray()  # nothing after this stage needs Ray: give the cores back
    return {"url": url, "model": _jsonable(model), "images": images}


def _serve_log_tail(logs: Path, chars: int = 3000) -> str:
    """The end of the Serve replica logs (where a Sampler that failed to load says why)."""
    files = sorted(logs.glob("replica_*.log"), key=lambda p: p.stat().st_mtime) if logs.is_dir() else []
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-chars:]}" for p in files[-2:])


@contextlib.contextmanager
def _serve_driver_logs(level: int) -> Iterator[None]:
    """Serve's driver-side logger ("Started Serve ...", "Application ... is ready") at `level` for a while."""
    import ray.serve  # noqa: F401 - its import configures the logger (at INFO)

    logger = logging.getLogger("ray.serve")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _stop_serve(ctx: Context) -> None:
    """Delete the Serve application of the serve stage (waits until its replicas have stopped).

    Serve's controller and proxy stay until the quickstart's Ray is stopped right after; `serve.shutdown()`
    would also stop them, at the price of a spurious raylet error about its own shutdown task.
    """
    name, ctx.serve_app = ctx.serve_app, None
    if not name:
        return
    from ray import serve

    try:
        with _serve_driver_logs(logging.WARNING):
            serve.delete(name)
    except Exception as exc:  # Ray is stopped next anyway, which ends the replicas too
        ctx.log(f"could not delete the Serve application {name!r}: {exc}")


# --- 8. a sample grid per model ------------------------------------------------------------------------


def _samples_config(ctx: Context) -> dict:
    return {"prompts": PROMPTS, "n": ctx.mode.grid_images, "steps": ctx.mode.serve_steps, "guidance": GUIDANCE}


def _samples_run(ctx: Context) -> dict:
    from pipelines.cli.sample import main as sample_main
    from pipelines.infra.tracking import get_client, sweep_points

    client = get_client()
    _, points = sweep_points(client, parent_run_id=ctx.results["sweep"]["parent_run_id"])
    out = ctx.path("samples")
    out.mkdir(parents=True, exist_ok=True)
    grids = []
    # Per model: its checkpoint at the largest budget (the best-trained version of that size).
    best: dict[str, dict] = {}
    for p in points:
        if p.get("checkpoint") and (p["model"] not in best or p["budget_flops"] > best[p["model"]]["budget_flops"]):
            best[p["model"]] = p
    for model, p in sorted(best.items(), key=lambda kv: kv[1].get("params") or 0):
        path = out / f"{model.replace('/', '_')}.png"
        argv = ["--checkpoint", str(p["checkpoint"]), "--steps", str(ctx.mode.serve_steps), "--seed", "0",
                "--num", str(ctx.mode.grid_images), "--guidance", str(GUIDANCE), "--out", str(path)]
        for prompt in PROMPTS:  # image i uses prompt i % len(PROMPTS)
            argv += ["--prompt", prompt]
        rc = sample_main(argv)
        if rc not in (0, None) or not path.is_file():
            raise RuntimeError(f"ditscale sample {' '.join(argv)} failed (rc={rc})")
        grids.append({"model": model, "params": p.get("params"), "budget_flops": p.get("budget_flops"),
                      "fid": p.get("fid"), "checkpoint": str(p["checkpoint"]), "path": str(path)})
        ctx.log(f"{model}: {path.name}")
    return {"grids": grids}


# --- 9. report -----------------------------------------------------------------------------------------


def _report_run(ctx: Context) -> dict:
    from pipelines.infra.tracking import get_client, sweep_points
    from jobs.scaling.report import trial_table

    client = get_client()
    _, points = sweep_points(client, parent_run_id=ctx.results["sweep"]["parent_run_id"])
    report = json.loads(Path(ctx.results["fit"]["report"]).read_text())
    path = ctx.path("report.md")
    path.write_text(render_report(ctx, report, points, trial_table(points)))
    _log_quickstart_run(ctx, path)
    ctx.log(f"wrote {path}")
    return {"path": str(path)}


def render_report(ctx: Context, fit: dict, points: list[dict], table: str) -> str:
    """The Markdown report: scaling plot, fitted law with intervals, sample grids, trial table."""
    rel = lambda p: os.path.relpath(p, ctx.out)  # noqa: E731 - links relative to the report
    law = fit.get("fid_law", {})
    lines = [f"# ditscale quickstart report ({ctx.mode.name})", ""]
    lines += [f"{len(points)} points: {len(fit.get('models', []))} MM-DiT sizes x {len(fit.get('budgets', []))} "
              f"compute budgets on the built-in shapes data, FID at every point. "
              f"Compute C = training FLOPs (multiply-add = 2 FLOPs, training step = 3 x forward).", ""]
    lines += ["## Scaling law", ""]
    if "error" in law:
        lines += [f"FID law not fitted: {law['error']}", ""]
    else:
        lines += [f"**{law_sentence(law)}**", ""]
    plots = ctx.results["fit"]["plots"]
    for p in plots:
        lines.append(f"![{Path(p).stem}]({rel(p)})")
    lines += ["", "All fitted laws (bootstrap intervals, held-out check without the largest budget):", "", "```",
              ctx.results["fit"]["laws"], "```", ""]
    lines += ["## Samples per model", ""]
    for g in ctx.results["samples"]["grids"]:
        fid = f"FID {g['fid']:.2f}, " if g.get("fid") is not None else ""
        lines += [f"### {g['model']}", "", f"{fid}{_g(g.get('params'))} parameters, trained to "
                  f"{_g(g.get('budget_flops'))} FLOPs; prompts, left to right: " + "; ".join(f'\"{p}\"' for p in PROMPTS), "", f"![{g['model']}]({rel(g['path'])})", ""]
    served = ctx.results["serve"]
    promo = ctx.results["promote"]
    lines += ["## Served champion", "",
              f"Registered model `{promo['model_name']}` version {promo['version']} (alias `{promo['alias']}`): "
              f"{promo.get('model')}, FID {_g(promo.get('fid'))}, checkpoint `{promo['checkpoint']}`.", "",
              "Images returned by `POST /v1/generate` on the Ray Serve deployment:", "", "| prompt | seed | image |",
              "|---|---|---|"]
    for img in served["images"]:
        lines.append(f"| {img['prompt']} | {img['seed']} | ![]({rel(img['path'])}) |")
    lines += ["", "## Trials", "", "```", table, "```", "",
              "## Reproduce / explore", "", "```bash",
              f"ditscale report --parent-run {ctx.results['sweep']['parent_run_id']} --tracking-uri {_tracking_uri()}",
              f"mlflow ui --backend-store-uri {_tracking_uri()}", "```", ""]
    return "\n".join(lines)


def law_sentence(law: dict) -> str:
    """'FID(C) = A * C^-beta + FID_inf with A = .. [lo, hi], ...' from a fitted law dict."""
    parts = []
    for name, v in law["params"].items():
        ci = law.get("ci", {}).get(name)
        parts.append(f"{name} = {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
    level = int(round(law.get("ci_level", 0.95) * 100))
    form = law["form"] if "=" in law["form"] else f"FID(C) = {law['form']}"
    if law.get("dof", 1) <= 0:
        # 3 frontier points for 3 parameters: the fit is exact and a bootstrap has nothing to resample.
        return (f"{form} with " + ", ".join(parts) + f" (exact fit through {law.get('n_points')} frontier points: "
                "no interval; intervals need >= 4 distinct budgets; C in training FLOPs)")
    return f"{form} with " + ", ".join(parts) + f" ({level}% bootstrap intervals; C in training FLOPs)"


def _g(v: Any) -> str:
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return "-"


def _tracking_uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


def _log_quickstart_run(ctx: Context, report: Path) -> None:
    """One MLflow run for the quickstart itself: stage timings, the report and everything it shows."""
    from pipelines.infra.tracking import ensure_experiment, get_client

    client = get_client()
    exp = ensure_experiment(client, "ditscale-quickstart-runs")
    run = client.create_run(exp, run_name=f"quickstart-{ctx.mode.name}",
                            tags={"ditscale.role": "quickstart", "ditscale.sweep_parent_run": ctx.results["sweep"]["parent_run_id"]})
    rid = run.info.run_id
    client.log_param(rid, "mode", ctx.mode.name)
    for name, res in ctx.results.items():
        marker = ctx.path("stages", f"{name}.json")
        if marker.is_file():
            client.log_metric(rid, f"stage_s.{name}", float(json.loads(marker.read_text())["seconds"]))
    client.log_artifact(rid, str(report))
    for sub in ("fit", "samples", "served"):
        if ctx.path(sub).is_dir():
            client.log_artifacts(rid, str(ctx.path(sub)), artifact_path=sub)
    client.set_terminated(rid, "FINISHED")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _stage_list() -> list[Stage]:
    return [
        Stage("vae", "train a small VAE on the built-in data", _vae_config, _vae_run,
              lambda r: [r["path"]]),
        Stage("features", "train the FID feature network", _features_config, _features_run,
              lambda r: [r["path"]]),
        Stage("precompute", "precompute VAE latents + MiniLM text embeddings (Ray Data)", _precompute_config,
              _precompute_run, lambda r: [r["manifest"]]),
        Stage("sweep", "3x3 sweep: 3 MM-DiT sizes x 3 budgets, FID at every point (Ray Tune + Train)",
              _sweep_config, _sweep_run, lambda r: [r["sweep_dir"]]),
        Stage("fit", "fit the scaling law FID(C) = A * C^-beta + FID_inf", _fit_config, _fit_run,
              lambda r: [r["report"], *r["plots"]]),
        Stage("promote", "promote the champion in the MLflow registry", lambda ctx: {}, _promote_run,
              lambda r: [r["checkpoint"]] if "://" not in r["checkpoint"] else []),
        Stage("serve", "deploy on Ray Serve and generate over HTTP", _serve_config, _serve_run,
              lambda r: [i["path"] for i in r["images"]]),
        Stage("samples", "a sample grid per model", _samples_config, _samples_run,
              lambda r: [g["path"] for g in r["grids"]]),
        Stage("report", "write the report", lambda ctx: {"v": 1}, _report_run, lambda r: [r["path"]]),
    ]


# ----------------------------------------------------------------------------------------------------------
# CLI.


def _set_env(out: Path) -> None:
    """Quiet/offline env, the local MLflow store, and a Ray auth token of this run's own."""
    from pipelines.infra.ray_runtime import apply_ray_env

    apply_ray_env()  # offline, no telemetry, Ray Data INFO lines to the session log (inherited by the Ray head)
    for key, value in {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
        "RAY_DEDUP_LOGS": "0",
        # Ray Serve's controller, proxy and replicas log to their files only (<out>/logs/serve, see the serve
        # stage), not to the console through the driver.
        "RAY_SERVE_LOG_TO_STDERR": "0",
        # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning torch threads
        # starve the other processes of the pipeline (measured: ~10x slower VAE steps under load).
        "OMP_WAIT_POLICY": "PASSIVE",
        # On 2 cores a trial's worker can wait minutes for a CPU held by another trial's FID actor; Ray Train's
        # 60 s default start timeout would log a (retried) controller error for what is only queueing.
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "900",
    }.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    # The quickstart always starts its own local Ray, never joins one named by RAY_ADDRESS.
    os.environ.pop("RAY_ADDRESS", None)
    # Token auth on the local cluster with a token of this run's own, so ~/.ray/auth_token is never written.
    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ditscale quickstart",
        description="Run the whole pipeline locally on the built-in defaults: data -> VAE -> feature net -> "
                    "precompute -> 3x3 sweep with FID -> scaling-law fit -> champion -> Ray Serve -> report. "
                    "Re-running reuses finished stages.",
    )
    p.add_argument("--tiny", action="store_true", help="reduced sizes (about 3 minutes) for tests and a first look")
    p.add_argument("--out", default="outputs/quickstart", help="output directory (default: outputs/quickstart)")
    p.add_argument("--force", action="store_true", help="rerun every stage even if its marker matches")
    return p


def main(argv: list[str] | None = None) -> int:
    """`ditscale quickstart [--tiny] [--out DIR] [--force]`."""
    opts = _parser().parse_args(argv)
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _set_env(out)
    mode = make_mode(opts.tiny)
    t0 = time.monotonic()
    ctx = Context(out, mode, t0)
    print(f"ditscale quickstart ({mode.name}) -> {out}", flush=True)
    rc = 0
    try:
        run_stages(ctx, _stage_list(), force=opts.force)
    except KeyboardInterrupt:
        print("\ninterrupted; finished stages are kept and reused on the next run", file=sys.stderr)
        rc = 130
    except Exception as exc:  # report which stage failed, keep the finished ones
        traceback.print_exc()
        print(f"\nquickstart failed after {ctx.elapsed()}: {exc}", file=sys.stderr)
        rc = 1
    finally:
        _shutdown(ctx)
    if rc == 0:
        _print_summary(ctx, time.monotonic() - t0)
    return rc


def _shutdown(ctx: Context) -> None:
    """Stop the Serve app and the local Ray this run started (nothing else)."""
    with contextlib.suppress(Exception):
        _stop_serve(ctx)
    with contextlib.suppress(Exception):
        ctx.stop_ray()


def _print_summary(ctx: Context, seconds: float) -> None:
    """Where everything is, the fitted law, and the MLflow UI command."""
    fit = json.loads(Path(ctx.results["fit"]["report"]).read_text())
    law = fit.get("fid_law", {})
    print(f"\n{'=' * 100}\nquickstart ({ctx.mode.name}) finished in {_fmt_s(seconds)}")
    if "error" not in law:
        print(f"fitted law: {law_sentence(law)}")
        ho = law.get("held_out") or {}
        if "rel_error" in ho:
            print(f"held-out check (fit without C={ho['compute']:.3g}): predicted FID {ho['predicted']:.3f}, "
                  f"observed {ho['observed']:.3f} ({100 * ho['rel_error']:.1f}% error)")
    p = ctx.results["promote"]
    print(f"champion: {p['model_name']} v{p['version']} ({p.get('model')}, FID {_g(p.get('fid'))})")
    print(f"report:   {ctx.results['report']['path']}")
    print(f"plots:    {ctx.results['fit']['dir']}")
    print(f"served:   {len(ctx.results['serve']['images'])} images in {ctx.path('served')}")
    print(f"\nopen the MLflow UI:\n  mlflow ui --backend-store-uri {_tracking_uri()}")


if __name__ == "__main__":
    raise SystemExit(main())
