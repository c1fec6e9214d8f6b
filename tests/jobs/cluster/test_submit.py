"""`ditscale submit` / `ditscale jobs` against a real Ray head node with the job server on loopback.

The head is started by this module with `ray start --head --block` in its own session, with token auth
on (a token of its own in RAY_AUTH_TOKEN, so ~/.ray/auth_token is never touched) and every port chosen
free, and is stopped by signalling exactly the processes of that session: never `ray stop`, which would
stop every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jobs.cli import main as ditscale
from jobs.cluster import submit
from pipelines.infra.ray_runtime import _session_pids, free_ports
from tests.conftest import REPO_ROOT, free_port
from tests.pipelines._precompute_helpers import tiny_vae

VENV_BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------------------------------
# Pure parts: entrypoint, runtime env, token lookup, argument errors (no cluster).


def test_dry_run_builds_entrypoint_and_runtime_env(capsys, monkeypatch):
    """The job runs `python -m <module> --config <repo-relative path> k=v ...` with the repo minus data/outputs."""
    monkeypatch.chdir(REPO_ROOT)
    cfg = "configs/sweep/tiny.yaml"
    rc = ditscale(
        [
            "submit",
            "sweep",
            "--address",
            "http://127.0.0.1:1",
            "--config",
            cfg,
            "base.optim.lr=0.001",
            'models=["MMDiT-d1"]',
            "output=s3://b/sweeps",
            "base.data.manifest=s3://b/latents",
            "--env",
            "FOO=bar",
            "--dry-run",
        ]
    )
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert (
        plan["entrypoint"]
        == "python -m jobs.sweep --config configs/sweep/tiny.yaml base.optim.lr=0.001 'models=[\"MMDiT-d1\"]' "
        "output=s3://b/sweeps base.data.manifest=s3://b/latents"
    )
    env = plan["runtime_env"]
    assert Path(env["working_dir"]) == REPO_ROOT
    for excluded in ("/data/", "/outputs/", "/.venv/", "/mlruns/"):
        assert excluded in env["excludes"]
    assert env["env_vars"]["FOO"] == "bar" and env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"


def test_the_uploaded_working_dir_holds_every_module_and_none_of_the_data(tmp_path):
    """Ray zips the working dir with these excludes (its own packaging code): every tracked module of the four
    packages goes to the cluster (an unanchored "data/" dropped ditcore/data), the top-level data and outputs
    do not."""
    import zipfile

    from ray._private.runtime_env.packaging import _zip_files

    tracked = subprocess.run(
        ["git", "ls-files", "ditcore", "pipelines", "jobs", "serve"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    modules = [p for p in tracked if p.endswith(".py")]
    assert "ditcore/data/builtin.py" in modules
    tree = tmp_path / "repo"
    junk = ["data/raw/img.png", "outputs/sweeps/x.json", ".venv/bin/python", "mlruns/0/meta.yaml", "runs/r/a.bin"]
    for rel in modules + junk:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    out = tmp_path / "pkg.zip"
    _zip_files(str(tree), submit.WORKING_DIR_EXCLUDES, str(out), include_gitignore=False)
    names = set(zipfile.ZipFile(out).namelist())
    missing = [m for m in modules if m not in names]
    assert not missing, f"left out of the job's code: {missing[:5]}"
    assert not [j for j in junk if j in names]


@pytest.mark.parametrize(
    "kind,module", [("precompute", "pipelines.precompute"), ("fit", "jobs.cli fit"), ("serve", "jobs.cli serve")]
)
def test_entrypoint_per_kind(kind, module):
    """Each kind runs its module; unknown flags after the overrides pass through to the job."""
    assert (
        submit.build_entrypoint(kind, "configs/x.yaml", ["a=1", "--experiment", "e"])
        == f"python -m {module} --config configs/x.yaml a=1 --experiment e"
    )


def test_config_outside_repo_or_missing_is_a_clear_error(capsys, monkeypatch, tmp_path):
    """A config that is not uploaded with the working dir would fail on the cluster: refuse it up front."""
    monkeypatch.chdir(REPO_ROOT)
    outside = tmp_path / "c.yaml"
    outside.write_text("a: 1\n")
    assert ditscale(["submit", "precompute", "--config", str(outside), "--dry-run"]) == 2
    assert "must be inside the working dir" in capsys.readouterr().err
    assert ditscale(["submit", "precompute", "--config", "configs/nope.yaml", "--dry-run"]) == 2
    assert "configs/nope.yaml: file not found" in capsys.readouterr().err
    # From outside the repository a repository-relative path is found inside the uploaded directory.
    monkeypatch.chdir(tmp_path)
    assert ditscale(["submit", "sweep", "--config", "configs/sweep/tiny.yaml", "--dry-run", *ON_S3]) == 0
    entry = json.loads(capsys.readouterr().out)["entrypoint"]
    assert entry == f"python -m jobs.sweep --config configs/sweep/tiny.yaml {' '.join(ON_S3)}"


ON_S3 = ["output=s3://b/sweeps", "base.data.manifest=s3://b/latents"]


def test_a_working_dir_that_is_not_a_checkout_is_refused(capsys, monkeypatch, tmp_path):
    """After a non-editable install the default working dir is site-packages (gigabytes, no project): refused."""
    monkeypatch.chdir(REPO_ROOT)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "f.yaml").write_text("{}\n")
    args = ["submit", "fit", "--experiment", "e", "--working-dir", str(tmp_path), "--dry-run"]
    assert ditscale(args) == 2
    assert f"--working-dir {tmp_path}: not a ditscale checkout" in capsys.readouterr().err


def test_paths_the_job_would_write_into_or_miss_in_rays_copy_of_the_code_are_refused(capsys, monkeypatch):
    """The job runs in Ray's temporary copy of the working dir: the tiny config's own output (outputs/sweeps) was
    written there and lost, and its manifest (outputs/latents/builtin) is a folder never uploaded."""
    monkeypatch.chdir(REPO_ROOT)
    sweep = ["submit", "sweep", "--config", "configs/sweep/tiny.yaml", "--dry-run"]
    assert ditscale(sweep) == 2
    assert "output='outputs/sweeps' is a relative path" in capsys.readouterr().err
    assert ditscale([*sweep, "output=s3://b/sweeps"]) == 2
    assert "base.data.manifest='outputs/latents/builtin' is a relative path into a folder" in capsys.readouterr().err
    pre = ["submit", "precompute", "--config", "configs/precompute/builtin.yaml", "--dry-run", "output=/shared/lat"]
    assert ditscale(pre) == 2
    assert "vae.path='outputs/vae'" in capsys.readouterr().err
    assert ditscale([*pre, "vae.path=/shared/vae", "fid.feature_net=s3://b/net"]) == 0
    # A fit's --out too: a relative one was written into that copy and lost, an s3:// one is not a local path.
    fit = ["submit", "fit", "--experiment", "e", "--dry-run"]
    for out in ("fits", "s3://b/fits", "~/fits"):
        assert ditscale([*fit, "--out", out]) == 2
        assert f"the fit job's --out {out!r}: give an absolute path" in capsys.readouterr().err
    assert ditscale([*fit, "--out", "/shared/fits"]) == 0 and ditscale(fit) == 0


def test_a_flag_neither_submit_nor_the_job_takes_is_refused_before_anything_is_sent(capsys, monkeypatch):
    """A typo such as --dryrun would travel to the job and the job would be submitted: refuse it, naming the flag."""
    monkeypatch.chdir(REPO_ROOT)
    port = free_port()  # nothing listens there: a submission attempt would fail differently
    rc = ditscale(
        ["submit", "sweep", "--config", "pyproject.toml", "--dryrun", "--address", f"http://127.0.0.1:{port}"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown option --dryrun" in err and "did you mean --dry-run?" in err and "cannot reach" not in err
    assert ditscale(["submit", "fit", "--experimnt", "e", "--dry-run"]) == 2
    assert "did you mean --experiment?" in capsys.readouterr().err
    # The job's own flags still pass through.
    assert ditscale(["submit", "fit", "--experiment", "e", "--n-boot", "50", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["entrypoint"].endswith("fit --experiment e --n-boot 50")
    assert ditscale(["submit", "fit", "--num-cpus", "inf", "--experiment", "e", "--dry-run"]) == 2
    assert "--num-cpus must be a finite number >= 0, got inf" in capsys.readouterr().err


def test_the_jobs_config_is_checked_before_anything_is_sent(capsys, monkeypatch):
    """A misspelt key or a wrong type in a sweep's or precompute's overrides fails here, not on the cluster."""
    monkeypatch.chdir(REPO_ROOT)
    sweep = ["submit", "sweep", "--config", "configs/sweep/tiny.yaml", "--dry-run", *ON_S3]
    assert ditscale([*sweep, "base.optim.lrr=1"]) == 2
    assert "the sweep job's config: unknown config key(s): base.optim.lrr" in capsys.readouterr().err
    assert ditscale([*sweep, "max_concurrent=abc"]) == 2
    assert "max_concurrent: expected an integer, got 'abc'" in capsys.readouterr().err
    pre = ["submit", "precompute", "--config", "configs/precompute/builtin.yaml", "--dry-run", "source.cuont=3"]
    assert ditscale(pre) == 2
    assert "the precompute job's config: unknown config key(s): source.cuont" in capsys.readouterr().err
    assert ditscale([*sweep, "max_concurrent=2"]) == 0
    capsys.readouterr()
    # The job's whole command line is parsed by its own parser: a fit needs its sweep and takes no --config (the
    # docs showed one), and would only have failed on the cluster.
    assert ditscale(["submit", "fit", "--dry-run", "--config", "configs/sweep/tiny.yaml"]) == 2
    assert "the fit job's command line" in capsys.readouterr().err
    assert ditscale(["submit", "fit", "--dry-run", "--experiment", "e", "--config", "configs/sweep/tiny.yaml"]) == 2
    assert "unrecognized arguments: --config configs/sweep/tiny.yaml" in capsys.readouterr().err
    assert ditscale([*sweep, "--num-cpus", "-3"]) == 2
    assert "--num-cpus must be a finite number >= 0, got -3.0" in capsys.readouterr().err
    # A flag both take is submit's (with a note); the job's own goes after `--`.
    serve = ["submit", "serve", "--dry-run", "--checkpoint", "s3://b/ck"]
    assert ditscale([*serve, "--num-gpus", "1"]) == 0
    out = capsys.readouterr()
    assert "--num-gpus is taken as `ditscale submit`'s" in out.err
    assert json.loads(out.out)["entrypoint"].endswith("serve --checkpoint s3://b/ck")
    assert ditscale([*serve, "--", "--num-gpus", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["entrypoint"].endswith("serve --checkpoint s3://b/ck --num-gpus 1")


def test_token_lookup_follows_rays_order(monkeypatch, tmp_path):
    """--token > RAY_AUTH_TOKEN > RAY_AUTH_TOKEN_PATH > ~/.ray/auth_token; nothing when auth is disabled."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    assert submit.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert submit.auth_headers() == {"Authorization": "Bearer from-home"}
    path = tmp_path / "tok"
    path.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert submit.resolve_auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.resolve_auth_token() == "from-env"
    assert submit.resolve_auth_token("explicit") == "explicit"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert submit.auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    path.write_text("")
    with pytest.raises(submit.SubmitError, match="RAY_AUTH_TOKEN_PATH"):
        submit.resolve_auth_token()


def test_unreachable_job_server_is_a_clear_error(capsys):
    port = free_port()
    assert ditscale(["jobs", "list", "--address", f"http://127.0.0.1:{port}"]) == 2
    assert f"cannot reach the Ray job server at http://127.0.0.1:{port}" in capsys.readouterr().err
    # A GCS-style address was taken by Ray for a cluster to connect to (35 s of retries and C++ warnings).
    assert ditscale(["jobs", "list", "--address", f"127.0.0.1:{port}"]) == 2
    assert "the Ray job server's URL, http(s)://HOST:8265" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# A real head node on loopback.


def _stop_session(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the head we started: SIGTERM to `ray start --block` (it tears its processes down), then
    SIGKILL leftovers."""
    sid = proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _session_pids(sid):
        time.sleep(0.2)
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _wait_for_job_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Poll until the job API answers (401 without a token counts: the server is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"Ray job server at {url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head node (2 CPUs, token auth, job server on 127.0.0.1) owned by this module; yields its address + env."""
    # Ray's unix socket paths must stay short: a /tmp/rayXXXX temp dir, not pytest's deep tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    token = secrets.token_hex(16)
    # Seven listeners on distinct ports: separate free_port() calls may pick one twice, and Ray then refuses to start.
    gcs_port, dash_port, client_port, agent_port, agent_grpc_port, metrics_port, runtime_env_port = free_ports(7)
    env = dict(os.environ)
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # The job's `python` must be this venv's interpreter (it has the project's dependencies).
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        # Every fixed default port moved to a free one, so other Ray instances on this machine never clash.
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--dashboard-agent-grpc-port={agent_grpc_port}",
        f"--metrics-export-port={metrics_port}",
        f"--runtime-env-agent-port={runtime_env_port}",
    ]
    log = Path(temp_dir) / "ray-start.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash_port}"
    try:
        _wait_for_job_server(address, proc, log)
        yield {"address": address, "token": token, "env": env, "temp_dir": temp_dir}
    finally:
        _stop_session(proc)


@pytest.fixture
def head_env(ray_head, monkeypatch):
    """The client side of the head's auth: the token in RAY_AUTH_TOKEN, as a user would export it."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head["token"])
    monkeypatch.chdir(REPO_ROOT)
    return ray_head


def _wait_status(address: str, job_id: str, statuses: set[str], timeout: float) -> str:
    """Poll `ditscale jobs status --json` until the job reaches one of `statuses` (deadline, not sleeps)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers=submit.auth_headers())
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in statuses:
            return status
        if status in submit.TERMINAL:
            break
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    raise AssertionError(f"job {job_id} is {status}, expected {statuses}; logs:\n{logs[-4000:]}")


def _submitted_id(out: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith("submitted "))
    return line.split()[3]


@pytest.mark.slow
def test_wrong_or_missing_token_is_rejected_with_a_clear_error(head_env, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert ditscale(["jobs", "list", "--address", head_env["address"]]) == 2
    assert "Invalid authentication token" in capsys.readouterr().err
    assert ditscale(["jobs", "list", "--address", head_env["address"], "--token", head_env["token"]]) == 0


PRECOMPUTE_CONFIG = "configs/precompute/builtin.yaml"


@pytest.mark.slow
def test_submitted_precompute_job_runs_and_is_listed(head_env, capsys, tmp_path):
    """A real precompute (built-in data, tiny random VAE, class labels only) runs as a Ray job to SUCCEEDED."""
    address = head_env["address"]
    out_dir = tmp_path / "latents"
    vae_dir = tiny_vae(tmp_path / "vae", scaling_factor=0.18215, shift_factor=None)  # diffusers' default scale
    overrides = [
        f"output={out_dir}",
        f"vae.path={vae_dir}",
        "image_size=32",
        "text=null",
        "fid=null",
        "progress=false",
        "source.kind=builtin",
        "source.count=12",
        "source.shard_size=6",
        "compute.actors=1",
        "compute.batch_size=6",
        "compute.cpus_per_actor=0.5",
        "compute.decode_cpus=0.5",
    ]
    config = ["--config", PRECOMPUTE_CONFIG] if (REPO_ROOT / PRECOMPUTE_CONFIG).is_file() else []
    rc = ditscale(["submit", "precompute", "--address", address, *config, *overrides])
    assert rc == 0
    job_id = _submitted_id(capsys.readouterr().out)

    assert _wait_status(address, job_id, {"SUCCEEDED"}, timeout=180) == "SUCCEEDED"

    assert ditscale(["jobs", "status", job_id, "--address", address, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "SUCCEEDED" and "pipelines.precompute" in info["entrypoint"]

    assert ditscale(["jobs", "list", "--address", address, "--json"]) == 0
    assert job_id in {row["submission_id"] for row in json.loads(capsys.readouterr().out)}

    assert ditscale(["jobs", "logs", job_id, "--address", address]) == 0
    logs = capsys.readouterr().out
    assert "written" in logs

    # The job really wrote the latent dataset the contract describes.
    manifest = json.loads((out_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["input"] == counts["written"] + counts["failed"] and counts["written"] > 0


@pytest.mark.slow
def test_stop_a_running_job(head_env, capsys):
    """`ditscale jobs stop` ends a running job: its status becomes STOPPED."""
    address = head_env["address"]
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers=submit.auth_headers())
    job_id = client.submit_job(
        entrypoint="python -c 'import time; time.sleep(600)'", runtime_env={"env_vars": submit.JOB_ENV}
    )
    _wait_status(address, job_id, {"RUNNING"}, timeout=60)
    assert ditscale(["jobs", "stop", job_id, "--address", address, "--wait"]) == 0
    assert "STOPPED" in capsys.readouterr().out
    # Stopping it again: it says so (it printed "stop requested" for a job that had ended).
    assert ditscale(["jobs", "stop", job_id, "--address", address]) == 0
    assert f"{job_id}: already STOPPED; nothing to stop" in capsys.readouterr().out
    # A submission the server refuses (its id in use): one line naming the server's reason, not a traceback.
    rc = ditscale(["submit", "fit", "--experiment", "e", "--submission-id", job_id, "--address", address])
    err = capsys.readouterr().err
    assert rc == 2 and "did not take the fit job" in err and job_id in err and "Traceback" not in err, err
    # An id the cluster does not know: one line naming it from every action (logs and stop were tracebacks).
    for action in (["status"], ["logs"], ["logs", "--follow"], ["stop"]):
        assert ditscale(["jobs", action[0], "raysubmit_nope", *action[1:], "--address", address]) == 2
        assert "job raysubmit_nope:" in capsys.readouterr().err
