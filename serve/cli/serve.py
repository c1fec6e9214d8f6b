"""`ditscale serve`: start the sampler service on Ray Serve and keep it running (or detach).

ditscale serve --champion [--alias champion] [--config serve/config.yaml] [--port 8000] [--host 127.0.0.1] [--detach]
ditscale serve --checkpoint runs/ckpt/step_00001000 --set Sampler.user_config.default_steps=10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from ditcore.config import ConfigError, apply_overrides
from pipelines.cli.parsers import command_parser, nonneg_float, options_for, port_number, positive_float
from pipelines.infra.ray_runtime import init_ray
from serve.deploy import DEFAULT_CONFIG, DeploymentPlan, NotReadyError, deploy, plan_deployment, wait_healthy


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `ditscale serve`."""
    p = command_parser(
        "serve",
        "Serve a checkpoint over HTTP with Ray Serve (POST /v1/generate, GET /v1/model, GET /healthz, "
        "/docs). A non-loopback --host needs the bearer token in $DITSCALE_API_TOKEN (or "
        "--set Ingress.user_config.auth_disabled=true).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint directory or s3:// URI (overrides the config's args)")
    src.add_argument(
        "--champion", action="store_true", help="serve the MLflow registered version with alias 'champion' (--alias)"
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML")
    p.add_argument("--app", default=None, help="application name in the config (default: the first)")
    p.add_argument("--model-name", default=None, help="registered model name for --champion (default: the config's)")
    p.add_argument(
        "--alias",
        default=None,
        help="registered model alias for --champion (default: the config's, else 'champion'; a sweep promoted with "
        "`ditscale promote --alias NAME`)",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for --champion ($MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    p.add_argument("--port", type=port_number, default=8000, help="HTTP port")
    p.add_argument(
        "--num-gpus",
        type=nonneg_float,
        default=None,
        help="GPUs per Sampler replica (default: the config's; 0 when the cluster has no GPU)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DEPLOYMENT.KEY=VALUE",
        help="override a deployment option, e.g. Sampler.user_config.max_batch_size=8 (repeatable)",
    )
    p.add_argument(
        "--working-dir",
        default=None,
        help="upload this directory as the replicas' working_dir (for a remote RAY_ADDRESS cluster)",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="start in a background process, wait until /healthz answers, print its PID and exit",
    )
    p.add_argument("--log-file", default=None, help="with --detach: log file of the background process")
    p.add_argument(
        "--ready-timeout", type=positive_float, default=300.0, help="seconds to wait for the service to answer"
    )
    from pipelines.cli.config_args import add_print_config
    from serve.app_args import AppArgs

    add_print_config(p, ("application args (args: of the Serve config)", AppArgs))
    return p


def plan_dict(plan: DeploymentPlan) -> dict:
    """The resolved deployment plan as plain data (what --print-config prints)."""
    return {
        "name": plan.name,
        "route_prefix": plan.route_prefix,
        "args": plan.args.model_dump() if hasattr(plan.args, "model_dump") else plan.args,
        "deployments": plan.deployments,
        "http_options": plan.http_options,
        "runtime_env": plan.runtime_env,
    }


def _check_local_checkpoint(checkpoint: str | None) -> None:
    """On a local Ray the replicas read --checkpoint from this machine: a missing one is named now, not after Ray
    and Serve are up. (On a cluster, RAY_ADDRESS set to a Ray address, the path is the cluster's.)"""
    from pipelines.infra import storage

    if not checkpoint or storage.is_s3(checkpoint):
        return
    storage.check_location(checkpoint, "--checkpoint")
    address = (os.environ.get("RAY_ADDRESS") or "").strip()
    if address and not address.startswith(("http://", "https://")):
        return
    if not os.path.isdir(os.path.expanduser(checkpoint)):
        raise ConfigError(f"--checkpoint {checkpoint!r}: no such checkpoint directory")


def plan_from_args(ns: argparse.Namespace) -> DeploymentPlan:
    """The deployment plan the parsed options describe."""
    bad = [s for s in ns.set if "=" not in s or "." not in s.split("=", 1)[0]]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: expected DEPLOYMENT.KEY=VALUE")
    return plan_deployment(**options_for(plan_deployment, ns, app_name=ns.app, overrides=apply_overrides({}, ns.set)))


def child_argv(argv: list[str]) -> list[str]:
    """`argv` without --detach, also where it was abbreviated (argparse takes --det): a child given --det detached
    again, and again, each in a session of its own that a timeout's clean-up never reached."""
    return [a for a in argv if not (len(a) > 2 and a.startswith("--") and "--detach".startswith(a))]


def refuse_busy_port(plan: DeploymentPlan) -> None:
    """ConfigError when something already listens where the service would: its /healthz (an earlier `ditscale
    serve`) would be taken for the new service's, which cannot bind the port."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(plan.url)
    try:
        with socket.create_connection((url.hostname, url.port), timeout=2):
            pass
    except OSError:
        return  # nothing there
    raise ConfigError(
        f"--port {url.port}: {url.hostname}:{url.port} is already in use (an earlier `ditscale serve`?); stop it or "
        "pick another --port"
    )


def _detach(argv: list[str], ns: argparse.Namespace, plan: DeploymentPlan) -> int:
    """Re-run this command without --detach in a new session; return once it answers on /healthz."""
    refuse_busy_port(plan)
    log_path = ns.log_file or os.path.join(os.getcwd(), f"ditscale-serve-{ns.port}.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serve.cli.serve", *child_argv(argv)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_healthy(plan.url, ns.ready_timeout, alive=lambda: proc.poll() is None)
    except NotReadyError as exc:
        # Never leave a service running that this command did not report: stop it (SIGTERM shuts Serve down).
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the Ray it started goes with it
            exc = NotReadyError(f"{exc}; stopped it (pid {proc.pid}); raise --ready-timeout if loading takes longer")
        raise NotReadyError(f"{exc}; its log: {log_path}") from None
    print(json.dumps({"url": plan.url, "pid": proc.pid, "log": log_path, "stop": f"kill {proc.pid}"}))
    return 0


def _run_until_stopped(plan: DeploymentPlan, ns: argparse.Namespace) -> None:
    """Deploy, print the URL, block until Ctrl-C / SIGTERM, then shut Serve down."""
    import ray
    from ray import serve

    # A fresh local cluster unless RAY_ADDRESS names one; logical CPUs may exceed cores so replica num_cpus from a
    # GPU-box config still schedule.
    init_ray(runtime_env=plan.runtime_env or None, num_cpus=max(os.cpu_count() or 1, 8))
    stop, stopping = threading.Event(), threading.Event()
    deployed = False

    def on_sigterm(*_: Any) -> None:
        if deployed or stopping.is_set():
            # the serving loop drains, then shuts down; during the shutdown itself a signal must not cut
            # serve.shutdown() / ray.shutdown() short with a traceback
            stop.set()
        else:
            # deploy() blocks (serve.run, /healthz polls) up to --ready-timeout: stop it as Ctrl-C does. The event
            # alone was read only once it returned, so a stopped `--detach` start always ran into its SIGKILL.
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        print(
            f"ditscale serve: deploying {plan.name} (ready within --ready-timeout {ns.ready_timeout:g} s)", flush=True
        )
        url = deploy(plan, num_gpus=ns.num_gpus, ready_timeout=ns.ready_timeout)
        deployed = True
        print(
            f"ditscale serve: ready at {url}  (POST {url}/v1/generate, GET {url}/v1/model, docs {url}/docs); "
            "Ctrl-C to stop",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        try:
            if deployed:
                drain(plan.name)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            print("ditscale serve: stopping without waiting", file=sys.stderr, flush=True)
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


def drain(app_name: str) -> None:
    """Finish the requests in flight, then return: deleting the application first makes every replica wait for its
    ongoing requests (up to its `graceful_shutdown_timeout_s`) while the HTTP proxies, still up, send the responses.
    `serve.shutdown()` alone stops the proxies at once, so clients lose their connections mid-request."""
    from ray import serve

    print(
        "ditscale serve: shutting down: finishing requests in flight (Ctrl-C again to stop now)",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    serve.delete(app_name)
    print(f"ditscale serve: drained in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`ditscale serve`: validate everything, then run (or detach)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(argv)
    try:
        plan = plan_from_args(ns)
        if ns.print_config:
            from pipelines.cli.config_args import print_config

            print_config(plan_dict(plan))
            return 0
        _check_local_checkpoint(ns.checkpoint)
        if ns.detach:
            return _detach(argv, ns, plan)
        _run_until_stopped(plan, ns)
    except (ConfigError, NotReadyError) as exc:
        print(f"ditscale serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
