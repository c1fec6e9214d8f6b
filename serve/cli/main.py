"""`ditscale serve` (start the sampler service) and `ditscale loadtest` (throughput and latency percentiles).

    ditscale serve --champion [--config serve/config.yaml] [--port 8000] [--host 127.0.0.1] [--detach]
    ditscale serve --checkpoint runs/ckpt/step_00001000 --set Sampler.user_config.default_steps=10
    ditscale loadtest --url http://127.0.0.1:8000 --concurrency 1,4,16 --requests 64
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ditscale serve",
        description="Serve a checkpoint over HTTP with Ray Serve (POST /v1/generate, GET /v1/model, GET /healthz, /docs).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint directory or s3:// URI (overrides the config's args)")
    src.add_argument("--champion", action="store_true", help="serve the MLflow registered model version with alias 'champion'")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML (default: %(default)s)")
    p.add_argument("--app", default=None, help="application name in the config (default: the first)")
    p.add_argument("--model-name", default=None, help="registered model name for --champion (default: config args or 'ditscale')")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for --champion (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per Sampler replica (default: the config's; 0 when the cluster has no GPU)")
    p.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.KEY=VALUE",
                   help="override a deployment option, e.g. Sampler.user_config.max_batch_size=8 (repeatable)")
    p.add_argument("--working-dir", default=None,
                   help="upload this directory as the replicas' working_dir (for a remote RAY_ADDRESS cluster)")
    p.add_argument("--detach", action="store_true",
                   help="start the service in a background process, wait until /healthz answers, print its PID and exit")
    p.add_argument("--log-file", default=None, help="with --detach: log file of the background process")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the service to answer (default: %(default)s)")
    return p


def _set_path(obj: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        obj = obj.setdefault(k, {})
        if not isinstance(obj, dict):
            raise SystemExit(f"ditscale serve: --set {dotted}: {k!r} is not a mapping")
    obj[keys[-1]] = value


def load_app_config(path: str, app_name: str | None = None) -> tuple[dict, dict]:
    """(whole config dict, chosen application dict) of a Serve config file, validated by Serve's schema."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if "applications" not in raw:
        raw = {"applications": [raw]}  # a single ServeApplicationSchema
    ServeDeploySchema.model_validate(raw)  # errors name the bad key, in Serve's words
    apps = raw["applications"]
    if app_name is None:
        return raw, apps[0]
    for app in apps:
        if app.get("name") == app_name:
            return raw, app
    raise SystemExit(f"ditscale serve: --app {app_name!r} not in {path} (have {[a.get('name') for a in apps]})")


def prepare_deployment(ns: argparse.Namespace) -> dict:
    """Resolved plan: app args, per-deployment options, http options, runtime_env, app name and prefix."""
    from ditcore.config import parse_value

    raw, app = load_app_config(ns.config, ns.app)
    args = dict(app.get("args") or {})
    if ns.checkpoint:
        args["checkpoint"], args["champion"] = ns.checkpoint, False
    elif ns.champion:
        args["checkpoint"], args["champion"] = None, True
    if ns.model_name:
        args["model_name"] = ns.model_name
    if ns.tracking_uri:
        args["tracking_uri"] = ns.tracking_uri
    if args.get("champion") and not args.get("tracking_uri"):
        # Resolve here: replicas run in another working directory and may not share the driver's env.
        if os.environ.get("MLFLOW_TRACKING_URI"):
            args["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
        elif Path("mlflow.db").is_file():
            args["tracking_uri"] = f"sqlite:///{Path('mlflow.db').resolve()}"
    uri = args.get("tracking_uri")
    if isinstance(uri, str) and uri.startswith("sqlite:///") and not os.path.isabs(uri[len("sqlite:///"):]):
        args["tracking_uri"] = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    deployments = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in copy.deepcopy(app.get("deployments") or [])}
    for item in ns.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise SystemExit(f"ditscale serve: --set {item!r}: expected DEPLOYMENT.KEY=VALUE")
        key, value = item.split("=", 1)
        name, rest = key.split(".", 1)
        _set_path(deployments.setdefault(name, {}), rest, parse_value(value))
    http = dict(raw.get("http_options") or {})
    http.update({"host": ns.host, "port": ns.port})
    runtime_env = dict(app.get("runtime_env") or {})
    if ns.working_dir:
        runtime_env["working_dir"] = os.path.abspath(ns.working_dir)
        runtime_env.setdefault("excludes", [".venv", ".git", "*.egg-info", "__pycache__", "runs", "mlruns", "*.db"])
    return {"args": args, "deployments": deployments, "http_options": http, "runtime_env": runtime_env,
            "name": app.get("name") or "ditscale", "route_prefix": app.get("route_prefix") or "/"}


def _fit_resources(deployments: dict, num_gpus: float | None) -> None:
    """Drop GPU requests the cluster cannot satisfy (a laptop) instead of waiting forever for a GPU."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    sampler = deployments.setdefault("Sampler", {})
    opts = sampler.setdefault("ray_actor_options", {})
    if num_gpus is not None:
        opts["num_gpus"] = num_gpus
    elif float(opts.get("num_gpus") or 0) > 0 and gpus == 0:
        print("ditscale serve: the cluster has no GPU; running the Sampler on CPU (num_gpus=0)", file=sys.stderr)
        opts["num_gpus"] = 0


def _url(host: str, port: int, prefix: str) -> str:
    h = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{h}:{port}{prefix.rstrip('/')}"


class NotReadyError(RuntimeError):
    """The service did not answer on /healthz in time (or its background process died first)."""


def _wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import requests

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NotReadyError(f"ditscale serve: background process exited with {proc.returncode} before {url}/healthz answered")
        try:
            r = requests.get(f"{url}/healthz", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise NotReadyError(f"ditscale serve: {url}/healthz did not answer within {timeout:.0f}s ({last})")


def _detach(argv: list[str], ns: argparse.Namespace, plan: dict) -> int:
    """Re-run this command without --detach in a new session; return once it answers on /healthz."""
    rest = [a for a in argv if a != "--detach"]
    log_path = ns.log_file or os.path.join(os.getcwd(), f"ditscale-serve-{ns.port}.log")
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "serve.cli", "serve", *rest], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = _url(ns.host, ns.port, plan["route_prefix"])
    try:
        _wait_healthy(url, ns.ready_timeout, proc)
    except NotReadyError as exc:
        raise SystemExit(str(exc)) from None
    print(json.dumps({"url": url, "pid": proc.pid, "log": log_path, "stop": f"kill {proc.pid}"}))
    return 0


def serve_plan(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """The options of `ditscale serve ARGV` and its resolved deployment plan (see `prepare_deployment`)."""
    ns = _serve_parser().parse_args(argv)
    return ns, prepare_deployment(ns)


def deploy(plan: dict, *, num_gpus: float | None = None, ready_timeout: float = 300.0,
           logging_config: dict | None = None) -> str:
    """Run the planned app on the Ray cluster this process is connected to; its URL once /healthz answers.

    Starts Serve with the plan's HTTP options (a Serve already running keeps its own). `logging_config`
    (Serve's LoggingConfig keys, e.g. `logs_dir`) applies to the Serve controller, proxy and replicas.
    The plan's `runtime_env` is the job's: the caller passes it to `ray.init` (or its Ray has that
    environment already). Raises NotReadyError if the service does not answer within `ready_timeout` s.
    """
    from ray import serve

    from serve.app import make_app

    _fit_resources(plan["deployments"], num_gpus)
    serve.start(http_options=plan["http_options"], logging_config=logging_config)
    serve.run(make_app(plan["args"], plan["deployments"]), name=plan["name"], route_prefix=plan["route_prefix"],
              logging_config=logging_config)
    url = _url(plan["http_options"]["host"], plan["http_options"]["port"], plan["route_prefix"])
    _wait_healthy(url, ready_timeout)
    return url


def serve_main(argv: list[str]) -> int:
    """`ditscale serve`: start Ray (local unless RAY_ADDRESS), deploy the app, block until Ctrl-C/SIGTERM."""
    from pipelines.infra.ray_runtime import apply_ray_env

    apply_ray_env()
    ns, plan = serve_plan(argv)
    from serve.app import make_app  # validates args before anything starts

    make_app(plan["args"], {k: v for k, v in plan["deployments"].items()})
    if ns.detach:
        return _detach(argv, ns, plan)

    import ray
    from ray import serve

    init_kwargs: dict[str, Any] = {"runtime_env": plan["runtime_env"] or None}
    if not os.environ.get("RAY_ADDRESS"):
        # A fresh local cluster (never silently one a `ray start` left running); logical CPUs may exceed
        # cores so replica num_cpus from a GPU-box config still schedule.
        init_kwargs["address"] = "local"
        init_kwargs["num_cpus"] = max(os.cpu_count() or 1, 8)
        init_kwargs["include_dashboard"] = False
    ray.init(**init_kwargs)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        try:
            url = deploy(plan, num_gpus=ns.num_gpus, ready_timeout=ns.ready_timeout)
        except NotReadyError as exc:
            raise SystemExit(str(exc)) from None
        print(f"ditscale serve: ready at {url}  (POST {url}/v1/generate, GET {url}/v1/model, docs {url}/docs); Ctrl-C to stop",
              flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("ditscale serve: shutting down", file=sys.stderr, flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


# ---------------------------------------------------------------------------------------------
# loadtest
# ---------------------------------------------------------------------------------------------


def _loadtest_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ditscale loadtest",
                                description="Load-test a running sampler service: throughput and p50/p95/p99 latency per concurrency.")
    p.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels (default: %(default)s)")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured requests before each level (default: the concurrency)")
    p.add_argument("--body", default=None, help="JSON request body (default: a label or prompt chosen from GET /v1/model)")
    p.add_argument("--steps", type=int, default=None, help="steps per request (added to the body)")
    p.add_argument("--token", default=os.environ.get("DITSCALE_API_TOKEN"), help="bearer token (default: $DITSCALE_API_TOKEN)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def default_body(url: str, token: str | None = None) -> dict:
    """A valid generate body for the served model (label 0 or a fixed prompt)."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    info = requests.get(f"{url.rstrip('/')}/v1/model", headers=headers, timeout=60).json()
    return {"prompt": "a red circle on a blue background"} if info.get("conditioning") == "text" else {"label": 0}


def run_load(url: str, concurrency: int, requests_n: int, body: dict, *, token: str | None = None,
             timeout: float = 300.0, warmup: int | None = None) -> dict:
    """Send `requests_n` generate requests with `concurrency` in flight; throughput and latency percentiles."""
    import numpy as np
    import requests

    endpoint = f"{url.rstrip('/')}/v1/generate"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    local = threading.local()

    def one(i: int) -> tuple[float, int, int]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        payload = {**body, "seed": i}  # distinct seeds: every request is real work
        t0 = time.perf_counter()
        batch = 0
        try:
            r = session.post(endpoint, json=payload, headers=headers, timeout=timeout)
            status = r.status_code
            _ = r.content
            batch = int(r.headers.get("X-Ditscale-Batch-Images", 0) or 0)
        except requests.RequestException:
            status = -1
        return time.perf_counter() - t0, status, batch

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        n_warm = concurrency if warmup is None else warmup
        if n_warm:
            list(pool.map(one, range(10**6, 10**6 + n_warm)))
        t0 = time.perf_counter()
        results = list(pool.map(one, range(requests_n)))
        wall = time.perf_counter() - t0
    lat = np.array([d for d, s, _ in results if s == 200], dtype=np.float64)
    batches = [b for _, s, b in results if s == 200 and b > 0]
    statuses: dict[str, int] = {}
    for _, s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok = int(lat.size)
    pct = (lambda q: float(np.percentile(lat, q))) if ok else (lambda q: float("nan"))
    return {
        "concurrency": concurrency, "requests": requests_n, "ok": ok, "statuses": statuses, "wall_s": wall,
        "throughput_rps": ok / wall if wall > 0 else float("nan"),
        "p50_s": pct(50), "p95_s": pct(95), "p99_s": pct(99), "mean_s": float(lat.mean()) if ok else float("nan"),
        # Images in the forward batch each request ran in (X-Ditscale-Batch-Images; PNG responses only).
        "mean_batch_images": float(np.mean(batches)) if batches else float("nan"),
    }


def format_table(rows: list[dict], title: str | None = None) -> str:
    """Plain-text table of run_load results."""
    lines = [title] if title else []
    lines.append(f"{'conc':>5} {'reqs':>5} {'ok':>5} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'batch':>6}  statuses")
    for r in rows:
        lines.append(f"{r['concurrency']:>5} {r['requests']:>5} {r['ok']:>5} {r['throughput_rps']:>8.2f} "
                     f"{r['p50_s'] * 1e3:>9.1f} {r['p95_s'] * 1e3:>9.1f} {r['p99_s'] * 1e3:>9.1f} "
                     f"{r.get('mean_batch_images', float('nan')):>6.1f}  {r['statuses']}")
    return "\n".join(lines)


def loadtest_main(argv: list[str]) -> int:
    """`ditscale loadtest`: run each concurrency level in turn and print the table."""
    ns = _loadtest_parser().parse_args(argv)
    try:
        levels = [int(c) for c in ns.concurrency.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"ditscale loadtest: --concurrency {ns.concurrency!r}: expected integers like 1,4,16")
    if not levels or min(levels) < 1 or ns.requests < 1:
        raise SystemExit("ditscale loadtest: --concurrency levels and --requests must be >= 1")
    try:
        body = json.loads(ns.body) if ns.body else default_body(ns.url, ns.token)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"ditscale loadtest: --body is not valid JSON: {exc}")
    if ns.steps is not None:
        body["steps"] = ns.steps
    rows = [run_load(ns.url, c, ns.requests, body, token=ns.token, timeout=ns.timeout, warmup=ns.warmup) for c in levels]
    print(json.dumps(rows, indent=2) if ns.json else format_table(rows, f"loadtest {ns.url} body={json.dumps(body)}"))
    return 0 if all(r["ok"] == r["requests"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    """Dispatch: argv[0] is "serve" or "loadtest" (the `ditscale` command name)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("serve", "loadtest"):
        print("usage: python -m serve.cli {serve,loadtest} [options]", file=sys.stderr)
        return 2
    return serve_main(argv[1:]) if argv[0] == "serve" else loadtest_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
