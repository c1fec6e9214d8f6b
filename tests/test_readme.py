"""The README's commands, run or checked, so the README cannot drift from the code.

Fenced blocks preceded by `<!-- test: NAME -->` are the ones checked here:
  setup       `make quickstart` / `make test` exist as Makefile targets
  quickstart  `ditscale quickstart --tiny --out DIR` really runs (in a temp dir) and leaves the report,
              the scaling plot, every report.json key the README lists as stable, the registered champion
              and images generated over HTTP; then the
              `mlflow ui` line names the store the run printed
  overrides   every command exits 0
  submit      every `ditscale submit ...` line resolves (with --dry-run) to the entrypoint it promises
  http        every curl body is a valid `POST /v1/generate` request for the service's own schema
Every relative link of the README must point at a file of the repository.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent


def tagged_blocks(text: str) -> dict[str, list[str]]:
    """{tag: [command, ...]} for each fenced block right after `<!-- test: tag -->` (continuation lines joined)."""
    blocks: dict[str, list[str]] = {}
    for m in re.finditer(r"<!-- test: ([\w-]+) -->\s*\n```[\w-]*\n(.*?)\n```", text, re.S):
        commands, current = [], ""
        for line in m.group(2).splitlines():
            line = line.rstrip()
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            # Drop trailing comments (`# ...` outside quotes is enough for the README's lines).
            cmd = shlex.join(shlex.split(current, comments=True))
            if cmd:
                commands.append(cmd)
            current = ""
        blocks.setdefault(m.group(1), []).extend(commands)
    return blocks


@pytest.fixture(scope="module")
def blocks() -> dict[str, list[str]]:
    found = tagged_blocks(README.read_text())
    for tag in ("setup", "quickstart", "overrides", "submit", "http"):
        assert found.get(tag), f"README has no commands in a block marked <!-- test: {tag} -->"
    return found


def _expand(key: str) -> list[str]:
    """`champion.{model, fid}` -> ["champion.model", "champion.fid"]; several brace groups multiply out."""
    m = re.search(r"\{([^{}]*)\}", key)
    if not m:
        return [key]
    return [e for part in m.group(1).split(",") for e in _expand(key[: m.start()] + part.strip() + key[m.end() :])]


def stable_report_keys(text: str) -> list[str]:
    """The dotted report.json keys the README promises every run (its "keys stay stable" sentence, up to the keys
    it names for real data only)."""
    m = re.search(r"its keys stay stable:(.*?)and for real data also", text, re.S)
    assert m, "README no longer lists report.json's stable keys"
    return [k for span in re.findall(r"`([^`]+)`", m.group(1)) for k in _expand(span)]


def _dotted(record: dict, key: str) -> tuple[bool, object]:
    value: object = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _quickstart_run(client) -> str:
    """The id of the quickstart's own MLflow run (the only one in its experiment)."""
    exp = client.get_experiment_by_name("ditscale-quickstart-runs")
    (run,) = client.search_runs([exp.experiment_id])
    return run.info.run_id


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def test_relative_links_resolve():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [lk for lk in links if "://" not in lk and not (REPO / lk).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_setup_commands_are_make_targets(blocks):
    makefile = (REPO / "Makefile").read_text()
    for cmd in blocks["setup"]:
        argv = shlex.split(cmd)
        assert argv[0] == "make", cmd
        assert re.search(rf"^{re.escape(argv[1])}:", makefile, re.M), f"Makefile has no target {argv[1]!r}"


def test_override_commands_run(blocks):
    for cmd in blocks["overrides"]:
        proc = subprocess.run(cmd, shell=True, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def test_submit_lines_resolve_to_their_entrypoints(blocks, monkeypatch, capsys):
    from jobs.cli import main as ditscale

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("DITSCALE_API_TOKEN", "t0ken")  # the serve line passes it on (--env), as the README says
    modules = {
        "precompute": "pipelines.precompute",
        "sweep": "jobs.sweep",
        "fit": "jobs.cli fit",
        "serve": "jobs.cli serve",
    }
    for cmd in blocks["submit"]:
        argv = shlex.split(cmd)
        assert argv[:2] == ["ditscale", "submit"], cmd
        assert ditscale(argv[1:] + ["--dry-run"]) == 0, cmd
        plan = json.loads(capsys.readouterr().out)
        assert plan["entrypoint"].startswith(f"python -m {modules[argv[2]]}"), (cmd, plan["entrypoint"])
        for arg in argv[3:]:
            if "=" in arg and not arg.startswith("-"):
                assert shlex.quote(arg) in plan["entrypoint"], (cmd, arg)


def test_curl_bodies_are_valid_generate_requests(blocks):
    from serve.schema import GenerateRequest

    bodies = []
    for cmd in blocks["http"]:
        argv = shlex.split(cmd)
        assert argv[0] == "curl", cmd
        url = next(a for a in argv if "localhost:" in a or "127.0.0.1:" in a)
        if "-d" in argv:
            assert url.endswith("/v1/generate") and "POST" in argv, cmd
            bodies.append(json.loads(argv[argv.index("-d") + 1]))
        else:
            assert url.endswith(("/v1/model", "/healthz")), cmd
    assert bodies
    for body in bodies:
        GenerateRequest.model_validate(body)


@pytest.mark.slow
def test_quickstart_tiny_from_the_readme(blocks, tmp_path):
    """The README's `ditscale quickstart --tiny` end to end, in a temp output dir, within 3 minutes."""
    qs = [c for c in blocks["quickstart"] if c.startswith("ditscale quickstart")]
    assert len(qs) == 1 and "--tiny" in qs[0]
    argv = shlex.split(qs[0])
    out = tmp_path / "qs"
    argv[argv.index("--out") + 1] = str(out)
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ditscale"), *argv[1:]], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    wall = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    (tmp_path / "quickstart.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    print(f"quickstart --tiny took {wall:.0f}s")

    report = (out / "report.md").read_text()
    for section in ("## Scaling law", "## Samples per model", "## Served champion", "## Trials"):
        assert section in report
    # The law with its intervals, and the held-out check.
    assert re.search(
        r"FID\(C\) = .*C\^-.* with A = [-+.\de]+ \[[-+.\de]+, [-+.\de]+\], beta = [-+.\de]+ \[[-+.\de]+, [-+.\de]+\]",
        report,
    ), "the fitted law with intervals"
    assert re.search(r"held-out \(fit without C=[-+.\de]+\): predicted [-+.\de]+, observed [-+.\de]+", report), (
        "held-out check"
    )
    # Every image the report shows exists (the scaling plot, one grid per model, the served images).
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 1 + 3 + 1
    for rel in images:
        assert (out / rel).is_file(), rel
    assert (out / "fit" / "fit_report.json").is_file()
    # The encoders every FID was measured with: the tiny sizes are not the shipped ones, so both were trained here.
    from jobs.quickstart.shipped import sha256_file, weights_file

    record = json.loads((out / "report.json").read_text())
    # Every key the README promises is there; the headline ones hold numbers of the right shape.
    keys = stable_report_keys(README.read_text())
    assert {"goodput", "law.beta", "law.beta_ci", "heldout_error", "champion.attr_accuracy"} <= set(keys), keys
    found = {k: _dotted(record, k) for k in keys}
    assert all(ok for ok, _ in found.values()), f"report.json lacks {[k for k, (ok, _) in found.items() if not ok]}"
    num = {k: value for k, (_, value) in found.items()}
    assert 0 < num["goodput"] <= 1 and abs(sum(record["time_share"].values()) - 1) < 0.02, record["time_share"]
    lo, hi = num["law.beta_ci"]
    assert lo <= num["law.beta"] <= hi
    assert num["heldout_error"] >= 0 and num["frontier_fid_first"] > 0 and num["frontier_fid_last"] > 0
    assert 0 <= num["champion.attr_accuracy"] <= 1 and num["champion.fid_samples"] >= 2
    encoders = record["encoders"]
    for key, kind in (("vae", "vae"), ("feature_net", "features")):
        assert encoders[key]["source"] == "trained"
        assert encoders[key]["sha256"] == sha256_file(out / kind / weights_file(kind))
    # Whether the law's floor sits at its bound (the lowest frontier FID), and if so the fit without the bound.
    law = record["law"]
    lowest = min(p["fid"] for p in json.loads((out / "fit" / "fit_report.json").read_text())["frontier"])
    assert law["floor_at_bound"] is (law["FID_inf"] >= lowest * (1 - 1e-6))
    if law["floor_at_bound"]:
        assert law["free_floor"]["FID_inf"] >= law["FID_inf"] and law["free_floor"]["beta"] is not None
    sweep = record["sweep"]  # the first run trained every trial
    assert sweep["trials_run"] >= 3 and sweep["trials_evaluate_only"] == sweep["trials_done_before"] == 0, sweep
    from pipelines.infra.code import training_code_fingerprint

    assert sweep["code_fingerprint"] == training_code_fingerprint() and sweep["runs_from_other_code"] == 0, sweep
    assert "this invocation:" not in report
    # Where it ran, in report.json and report.md, and as the sweep's MLflow tags.
    import torch

    from pipelines.infra.code import environment_words

    assert record["env"]["torch"] == torch.__version__ and f"- ran on: {environment_words(record['env'])}" in report
    k, n = record["n_opt_interior"]
    assert 0 <= k <= n >= 1
    # Sample grids: one column per prompt (the report names them left to right), one row per round of seeds.
    from PIL import Image

    from jobs.quickstart.modes import make_mode

    mode = make_mode(tiny=True)
    grids = sorted((out / "samples").glob("*.png"))
    assert grids, "no sample grids"
    for grid in grids:
        w, h = Image.open(grid).size
        cols = min(len(mode.prompts), mode.grid_images)
        assert w % cols == 0 and h == w // cols * -(-mode.grid_images // cols), (grid.name, w, h)
    assert "one column per prompt, left to right" in report
    served = list((out / "served").glob("*.png"))
    assert served and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in served)

    # The champion is registered in the run's own MLflow store.
    from mlflow import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("ditscale", "champion")
    assert Path(mv.tags["checkpoint"]).is_dir()
    client = MlflowClient(tracking_uri=uri)
    for run_id in (sweep["parent_run_id"], _quickstart_run(client)):
        tags = client.get_run(run_id).data.tags
        assert tags["env.torch"] == torch.__version__ and tags["env.cpu"] == record["env"]["cpu"], tags

    # It ends with the command to open the MLflow UI on that store, in the README's form.
    ui = [c for c in blocks["quickstart"] if c.startswith("mlflow ui")]
    assert ui and "--backend-store-uri sqlite:///" in ui[0]
    assert f"mlflow ui --backend-store-uri {uri}" in proc.stdout

    # A second run reuses every finished stage.
    proc2 = subprocess.run(
        [str(BIN / "ditscale"), *argv[1:]], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc2.returncode == 0, (proc2.stdout + proc2.stderr)[-4000:]
    banners = [ln for ln in proc2.stdout.splitlines() if ln.startswith("==> [")]
    assert banners and all("reused" in ln for ln in banners), banners

    # Another guidance: the sweep stage reruns on the kept sweep directory and evaluates the runs trained above,
    # training none of them again (every run's result.json as it was), under the same MLflow parent run.
    results = {p: p.read_bytes() for p in (out / "sweeps" / "tiny" / "runs").rglob("result.json")}
    assert results
    proc3 = subprocess.run(
        [str(BIN / "ditscale"), *argv[1:], "--sweep-set", "base.eval.guidance=1.5"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log3 = proc3.stdout + proc3.stderr
    assert proc3.returncode == 0, log3[-4000:]
    assert "finished trials and trained runs are reused" in proc3.stdout, log3[-4000:]
    record3 = json.loads((out / "report.json").read_text())
    n = record3["sweep"]["trials_run"]
    assert n >= 3 and record3["sweep"]["trials_evaluate_only"] == n and record3["sweep"]["trials_done_before"] == 0
    assert f"{n} to run ({n} of them only to evaluate runs trained before)" in proc3.stdout
    assert record3["sweep"]["parent_run_id"] == record["sweep"]["parent_run_id"] and record3["goodput"] == 0
    assert record3["sweep"]["runs_from_other_code"] == record3["sweep"]["runs_on_other_software"] == 0  # same code
    assert {p: p.read_bytes() for p in (out / "sweeps" / "tiny" / "runs").rglob("result.json")} == results
    assert (
        f"(goodput and time cover this invocation: {n} trial(s) only evaluated runs trained before)"
        in (out / "report.md").read_text()
    )
