"""Deploying the sampler service: a typed plan from serve/config.yaml plus options, then `deploy(plan)`.

`plan_deployment(...)` reads a Serve config file (validated by Serve's own schema), applies the checkpoint /
champion choice, host, port and per-deployment overrides, and fails closed on auth: a service bound to a
non-loopback host needs a bearer token (the env var the Ingress reads) unless the Ingress's user_config says
`auth_disabled: true`. `deploy(plan)` runs it on the Ray cluster this process is connected to and returns its
URL once /healthz answers. `ditscale serve` and the quickstart both go through these two functions.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ditcore.config import ConfigError, merge
from serve.app import app_args, check_deployments, make_app
from serve.auth import DEFAULT_TOKEN_ENV
from serve.ingress import INGRESS_NAME, IngressSettings
from serve.sampler import SAMPLER_NAME

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


class NotReadyError(RuntimeError):
    """The service did not answer on /healthz in time (or its process died first)."""


@dataclass
class DeploymentPlan:
    """Everything `deploy` needs: validated app args, per-deployment options, HTTP options, runtime env."""

    args: Any  # AppArgs
    deployments: dict[str, dict] = field(default_factory=dict)
    http_options: dict[str, Any] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)
    name: str = "ditscale"
    route_prefix: str = "/"

    @property
    def url(self) -> str:
        """Base URL clients use (a wildcard bind address is reached through loopback)."""
        host = self.http_options.get("host", "127.0.0.1")
        h = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"  # an IPv6 literal: a URL needs it in brackets
        return f"http://{h}:{self.http_options.get('port', 8000)}{self.route_prefix.rstrip('/')}"


def load_app_config(path: str | Path, app_name: str | None = None) -> tuple[dict, dict]:
    """(whole config, the chosen application) of a Serve config file, validated by Serve's schema."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from pipelines.infra.config_files import parse_yaml

    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = parse_yaml(Path(path).read_text(), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    if "applications" not in raw:
        raw = {"applications": [raw]}  # a single ServeApplicationSchema
    try:
        ServeDeploySchema.model_validate(raw)  # errors name the bad key, in Serve's words
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors(include_url=False)
        )
        raise ConfigError(f"{path}: not a Serve config: {problems}") from None
    apps = raw["applications"]
    if app_name is None:
        return raw, apps[0]
    for app in apps:
        if app.get("name") == app_name:
            return raw, app
    raise ConfigError(f"app: {app_name!r} is not in {path} (have {[a.get('name') for a in apps]})")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the service on this machine."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve_tracking_uri(args: dict) -> None:
    """Resolve the champion's tracking URI here: replicas run in another cwd and may not share the env."""
    from pipelines.infra.tracking import resolve_tracking_uri

    if args.get("champion"):
        args["tracking_uri"] = resolve_tracking_uri(args.get("tracking_uri"))


def _fail_closed(deployments: dict[str, dict], host: str) -> None:
    """A non-loopback service gets auth_required on its Ingress, and needs its token here, unless disabled."""
    ingress = deployments.setdefault(INGRESS_NAME, {})
    settings = IngressSettings(**(ingress.get("user_config") or {}))
    if settings.auth_disabled:
        return
    if is_loopback(host):
        # Only this machine can reach it: bearer auth when the token is set, open otherwise.
        ingress["user_config"] = {**(ingress.get("user_config") or {}), "auth_required": False}
        return
    env = settings.auth_token_env or DEFAULT_TOKEN_ENV
    if not os.environ.get(env, "").strip():  # blank is no token (serve.auth strips it)
        raise ConfigError(
            f"host {host!r} is reachable from other machines but ${env} (the bearer token clients must "
            f"send) is unset: export it, or set {INGRESS_NAME}.user_config.auth_disabled=true to serve "
            "without authentication"
        )
    ingress["user_config"] = {**(ingress.get("user_config") or {}), "auth_token_env": env, "auth_required": True}


def plan_deployment(
    config: str | Path = DEFAULT_CONFIG,
    *,
    app_name: str | None = None,
    checkpoint: str | None = None,
    champion: bool = False,
    model_name: str | None = None,
    alias: str | None = None,
    tracking_uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    overrides: dict[str, dict] | None = None,
    working_dir: str | None = None,
) -> DeploymentPlan:
    """The deployment plan of application `app_name` of `config` with the given choices applied (see module doc)."""
    raw, app = load_app_config(config, app_name)
    args = dict(app.get("args") or {})
    if checkpoint:
        args.update(checkpoint=checkpoint, champion=False)
    elif champion:
        args.update(checkpoint=None, champion=True)
    for key, value in (("model_name", model_name), ("alias", alias), ("tracking_uri", tracking_uri)):
        if value and not args.get("champion") and args.get("checkpoint"):
            # Accepted and never read: the app loads the checkpoint, not a registered version.
            raise ConfigError(
                f"--{key.replace('_', '-')} picks a registered model version: give it with --champion, not with a "
                f"checkpoint (this app serves {args['checkpoint']})"
            )
        if value:
            args[key] = value
    _resolve_tracking_uri(args)
    deployments = {
        d["name"]: {k: v for k, v in d.items() if k != "name"} for d in copy.deepcopy(app.get("deployments") or [])
    }
    deployments = check_deployments(merge(deployments, overrides))
    _fail_closed(deployments, host)
    runtime_env = dict(app.get("runtime_env") or {})
    if working_dir:
        runtime_env["working_dir"] = os.path.abspath(working_dir)
        runtime_env.setdefault("excludes", [".venv", ".git", "*.egg-info", "__pycache__", "runs", "mlruns", "*.db"])
    return DeploymentPlan(
        args=app_args(args),
        deployments=deployments,
        http_options={**(raw.get("http_options") or {}), "host": host, "port": port},
        runtime_env=runtime_env,
        name=app.get("name") or "ditscale",
        route_prefix=app.get("route_prefix") or "/",
    )


def fit_resources(plan: DeploymentPlan, num_gpus: float | None = None) -> None:
    """Drop GPU requests the cluster cannot satisfy (a laptop) instead of waiting forever for a GPU."""
    import ray

    opts = plan.deployments.setdefault(SAMPLER_NAME, {}).setdefault("ray_actor_options", {})
    if num_gpus is not None:
        opts["num_gpus"] = num_gpus
    elif float(opts.get("num_gpus") or 0) > 0 and float(ray.cluster_resources().get("GPU", 0)) == 0:
        print("ditscale serve: the cluster has no GPU; running the Sampler on CPU (num_gpus=0)", flush=True)
        opts["num_gpus"] = 0


def wait_healthy(url: str, timeout: float, alive: Any = None) -> None:
    """Poll `url`/healthz until it answers 200; NotReadyError after `timeout` s or when `alive()` turns False."""
    import requests

    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise NotReadyError(f"the service process exited before {url}/healthz answered")
        try:
            r = requests.get(f"{url}/healthz", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.5)  # polling an HTTP endpoint: there is no event to wait on
    raise NotReadyError(f"{url}/healthz did not answer within {timeout:.0f}s ({last})")


def _running_http() -> tuple[str, int] | None:
    """(host, port) the cluster's Serve really listens on; None where Ray does not say."""
    try:
        from ray.serve.context import _get_global_client

        cfg = _get_global_client().http_config
        return str(cfg.host), int(cfg.port)
    except Exception:  # noqa: BLE001 - a Ray without this accessor: the planned options stand
        return None


def adopt_running_http(plan: DeploymentPlan, host: str, port: int) -> None:
    """Judge and address the service by where Serve really listens, not by where it was asked to.

    A Serve already running on the cluster keeps its own HTTP options (Ray only logs that the new ones are ignored).
    One bound to another interface than the plan's loopback host is reachable from other machines, so it needs the
    token as any public host does (ConfigError before anything is deployed); its port gives the URL.
    """
    planned = plan.http_options.get("host", "127.0.0.1")
    if host != planned and not is_loopback(host):
        try:
            _fail_closed(plan.deployments, host)
        except ConfigError as exc:
            raise ConfigError(
                f"Serve already runs on this cluster bound to {host}:{port} (not the {planned!r} asked for); {exc}"
            ) from None
    plan.http_options = {**plan.http_options, "host": host, "port": port}


def deployments_with_runtime_env(plan: DeploymentPlan) -> dict[str, dict]:
    """The plan's deployment options with the application's runtime_env given to each deployment's actors (their own
    keys win; env_vars are merged), as `serve deploy` applies an application's runtime_env. `deploy()` on a Ray that
    was already running (the quickstart's) dropped it: only a fresh `init_ray` had taken it. The code keys
    (working_dir, py_modules, excludes) stay with the Ray job (`init_ray`): Serve takes no local path for an actor."""
    app = {k: v for k, v in (plan.runtime_env or {}).items() if k not in ("working_dir", "py_modules", "excludes")}
    if not app:
        return copy.deepcopy(plan.deployments)
    inherited = {name: {"ray_actor_options": {"runtime_env": app}} for name in (INGRESS_NAME, SAMPLER_NAME)}
    return merge(inherited, plan.deployments)


def deploy(
    plan: DeploymentPlan,
    *,
    num_gpus: float | None = None,
    ready_timeout: float = 300.0,
    logging_config: dict | None = None,
) -> str:
    """Run the planned app on the connected Ray cluster; its URL once /healthz answers (NotReadyError otherwise).

    Starts Serve with the plan's HTTP options (a Serve already running keeps its own); `logging_config` (Serve's
    LoggingConfig keys, e.g. `logs_dir`) applies to the controller, proxy and replicas.
    """
    from ray import serve

    fit_resources(plan, num_gpus)
    serve.start(http_options=plan.http_options, logging_config=logging_config)
    running = _running_http()
    if running is not None:
        adopt_running_http(plan, *running)
    serve.run(
        make_app(plan.args, deployments_with_runtime_env(plan)),
        name=plan.name,
        route_prefix=plan.route_prefix,
        logging_config=logging_config,
    )
    wait_healthy(plan.url, ready_timeout)
    return plan.url
