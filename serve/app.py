"""Ray Serve application of the sampler service: a FastAPI ingress and a batched sampler deployment.

    Ingress  (FastAPI, CPU)   validation, auth, body-size limit, PNG/JSON responses, 503 on overload  serve/ingress.py
      |  DeploymentHandle
    Sampler  (GPU when given) the generation pipeline; @serve.batch dynamic batching               serve/sampler.py

Deploy with `serve run serve/config.yaml`, `serve deploy serve/config.yaml` or `ditscale serve`; the import path is
`serve.app:build_app` and the application arguments are `AppArgs` (serve/app_args.py), which Serve validates
before calling the builder. `make_app(args, deployments)` also applies per-deployment options (the keys of a
config file's `deployments:` entries), for `ditscale serve`, tests and benchmarks. Weights load only through
safetensors; no request field is ever used as a path.
"""

from __future__ import annotations

import inspect
from typing import Any

from ray import serve

from ditcore.config import ConfigError, from_dict
from serve.app_args import AppArgs
from serve.batching import SamplerUserConfig
from serve.ingress import INGRESS_NAME, Ingress, IngressSettings
from serve.sampler import SAMPLER_NAME, Sampler

# Keys a config file's `deployments:` entry may set, i.e. the keyword options of Deployment.options().
_DEPLOYMENT_OPTION_KEYS = {
    p
    for p in inspect.signature(serve.Deployment.options).parameters
    if p not in ("self", "func_or_class", "version") and not p.startswith("_")
}


def app_args(args: AppArgs | dict | None) -> AppArgs:
    """Validated application arguments; a bad or missing key is a ConfigError naming it."""
    from pydantic import ValidationError

    if isinstance(args, AppArgs):
        return args
    try:
        return AppArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        raise ConfigError(
            "; ".join(f"args.{'.'.join(str(x) for x in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors())
        ) from None


def check_deployments(deployments: dict[str, dict] | None) -> dict[str, dict]:
    """Per-deployment options with unknown deployments / options and bad user_config named before anything runs."""
    opts = {k: dict(v) for k, v in (deployments or {}).items()}
    unknown = sorted(set(opts) - {INGRESS_NAME, SAMPLER_NAME})
    if unknown:
        raise ConfigError(f"deployments: unknown deployment(s) {unknown}; expected {INGRESS_NAME!r}, {SAMPLER_NAME!r}")
    for name, o in opts.items():
        o.pop("name", None)
        bad = sorted(set(o) - _DEPLOYMENT_OPTION_KEYS)
        if bad:
            raise ConfigError(f"deployments.{name}: unknown option(s) {bad}")
        if "user_config" in o:
            if name == SAMPLER_NAME:
                SamplerUserConfig.from_user_config(o["user_config"])
            else:
                from_dict(IngressSettings, o["user_config"] or {}, where="user_config")
        _check_with_serve_schema(name, o)
    return opts


def _check_with_serve_schema(name: str, options: dict) -> None:
    """Serve's own deployment schema on the options (num_replicas -2, a negative num_cpus, ...), here rather than
    once Ray and Serve are up; ConfigError naming the option. An autoscaling max_replicas below its min and above
    0 is Serve's to judge; 0 it accepts, so it is refused here."""
    from pydantic import ValidationError
    from ray.serve.schema import DeploymentSchema

    try:
        DeploymentSchema.model_validate({"name": name, **{k: v for k, v in options.items() if k != "user_config"}})
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("constrained", "function-")))
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not where:  # a rule across options: Serve's words say which
            raise ConfigError(f"deployments.{name}: {msg}") from None
        raise ConfigError(f"deployments.{name}.{where}: {msg} (got {err.get('input')!r})") from None
    auto = options.get("autoscaling_config")
    if isinstance(auto, dict) and auto.get("max_replicas") is not None and auto["max_replicas"] < 1:
        got = auto["max_replicas"]
        raise ConfigError(f"deployments.{name}.autoscaling_config.max_replicas must be >= 1, got {got}")


def make_app(args: AppArgs | dict | None = None, deployments: dict[str, dict] | None = None) -> serve.Application:
    """The application with `deployments` ("Ingress"/"Sampler" -> Deployment.options() overrides) applied."""
    validated = app_args(args)
    opts = check_deployments(deployments)
    sampler = Sampler.options(**opts.get(SAMPLER_NAME, {})).bind(validated)
    return Ingress.options(**opts.get(INGRESS_NAME, {})).bind(sampler)


def build_app(args: AppArgs) -> serve.Application:
    """Serve application builder (`import_path: serve.app:build_app`); Serve validates `args` into AppArgs."""
    return make_app(args)


__all__: list[Any] = ["AppArgs", "build_app", "make_app"]
