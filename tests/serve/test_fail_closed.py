"""Serving fails closed, checked without starting Ray: a non-loopback host needs the API token unless auth is
explicitly disabled; the shipped config makes a replica without its token refuse to start; only safetensors weights
load on the serving path (a directory holding only pickled .bin weights is refused)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import yaml

from ditcore.config import ConfigError
from serve.auth import BearerAuth
from serve.deploy import DEFAULT_CONFIG, plan_deployment
from serve.ingress import INGRESS_NAME, IngressSettings
from tests.conftest import REPO_ROOT

TOKEN_ENV = "DITSCALE_FAIL_CLOSED_TEST_TOKEN"


def _plan(host: str, **ingress_config):
    user_config = {"auth_token_env": TOKEN_ENV, **ingress_config}
    return plan_deployment(
        DEFAULT_CONFIG,
        checkpoint="/nonexistent/ckpt",
        host=host,
        overrides={INGRESS_NAME: {"user_config": user_config}},
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.org"])
def test_non_loopback_host_without_token_is_refused(host, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError) as err:
        _plan(host)
    msg = str(err.value)
    assert repr(host) in msg and f"${TOKEN_ENV}" in msg and "auth_disabled=true" in msg
    for blank in ("", " \n"):  # set but empty (or blank) is no token either
        monkeypatch.setenv(TOKEN_ENV, blank)
        with pytest.raises(ConfigError, match=TOKEN_ENV):
            _plan(host)


def test_non_loopback_host_with_token_requires_auth_on_the_replicas(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "t0ken")
    plan = _plan("0.0.0.0")
    cfg = plan.deployments[INGRESS_NAME]["user_config"]
    assert cfg["auth_required"] is True and cfg["auth_token_env"] == TOKEN_ENV
    assert plan.http_options["host"] == "0.0.0.0"


def test_auth_explicitly_disabled_serves_open_anywhere(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    plan = _plan("0.0.0.0", auth_disabled=True)
    settings = IngressSettings(**plan.deployments[INGRESS_NAME]["user_config"])
    assert settings.auth_disabled and not BearerAuth(None).enabled


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_host_runs_without_a_token(host, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    plan = _plan(host)
    assert plan.deployments[INGRESS_NAME]["user_config"]["auth_required"] is False
    assert urlsplit(plan.url).hostname == host  # an IPv6 literal is bracketed in the URL clients and --detach use


def test_a_serve_already_running_on_a_public_interface_is_judged_by_where_it_listens(monkeypatch):
    from serve.deploy import adopt_running_http

    # Asked for loopback (no token needed), but the cluster's Serve already listens on every interface.
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    plan = _plan("127.0.0.1")
    with pytest.raises(ConfigError) as err:
        adopt_running_http(plan, "0.0.0.0", 8000)
    assert "already runs on this cluster bound to 0.0.0.0:8000" in str(err.value) and f"${TOKEN_ENV}" in str(err.value)
    monkeypatch.setenv(TOKEN_ENV, "t0ken")
    plan = _plan("127.0.0.1")
    adopt_running_http(plan, "0.0.0.0", 8000)
    assert plan.deployments[INGRESS_NAME]["user_config"]["auth_required"] is True
    # Another loopback port: no token needed, and the URL clients get is where it really listens.
    monkeypatch.delenv(TOKEN_ENV)
    plan = _plan("127.0.0.1")
    adopt_running_http(plan, "127.0.0.1", 8123)
    assert plan.deployments[INGRESS_NAME]["user_config"]["auth_required"] is False
    assert urlsplit(plan.url).port == 8123


def test_shipped_config_makes_a_replica_without_its_token_refuse_to_start(monkeypatch):
    """`serve run serve/config.yaml` skips plan_deployment: the Ingress's own settings must fail closed."""
    raw = yaml.safe_load((REPO_ROOT / "serve" / "config.yaml").read_text())
    (app,) = raw["applications"]
    ingress = next(d for d in app["deployments"] if d["name"] == INGRESS_NAME)
    settings = IngressSettings(**ingress["user_config"])
    assert raw["http_options"]["host"] == "0.0.0.0" and settings.auth_required and not settings.auth_disabled
    monkeypatch.delenv(settings.auth_token_env, raising=False)
    with pytest.raises(ValueError, match=settings.auth_token_env):
        BearerAuth.from_env(settings.auth_token_env, required=settings.auth_required)
    monkeypatch.setenv(settings.auth_token_env, "t0ken")
    assert BearerAuth.from_env(settings.auth_token_env, required=True).enabled


def test_the_application_runtime_env_reaches_every_deployment_actor(tmp_path):
    # deploy() on a Ray already running (the quickstart's) used the plan's runtime_env nowhere: only a fresh init_ray
    # took it. Each deployment now gets it, its own keys winning and env_vars merged, as `serve deploy` does.
    from serve.app import make_app
    from serve.deploy import deployments_with_runtime_env
    from serve.sampler import SAMPLER_NAME

    plan = plan_deployment(
        DEFAULT_CONFIG,
        checkpoint="/nonexistent/ckpt",
        working_dir=str(tmp_path),
        overrides={
            SAMPLER_NAME: {"ray_actor_options": {"runtime_env": {"env_vars": {"OWN": "1", "HF_HUB_OFFLINE": "0"}}}}
        },
    )
    app_env = plan.runtime_env
    assert app_env["env_vars"]["HF_HUB_OFFLINE"] == "1" and app_env["working_dir"] == str(tmp_path)
    options = deployments_with_runtime_env(plan)
    ingress = options[INGRESS_NAME]["ray_actor_options"]["runtime_env"]
    sampler = options[SAMPLER_NAME]["ray_actor_options"]["runtime_env"]
    assert ingress == {"env_vars": app_env["env_vars"]}  # the code (working_dir) stays with the Ray job: init_ray
    assert "working_dir" not in sampler and sampler["env_vars"] == {
        **app_env["env_vars"],
        "OWN": "1",
        "HF_HUB_OFFLINE": "0",
    }
    assert "runtime_env" not in plan.deployments.get(INGRESS_NAME, {}).get("ray_actor_options", {})  # plan untouched
    make_app(plan.args, options)  # Serve takes them
