"""CLI conveniences: `--print-config` prints the resolved config as YAML and exits without running anything; each
job's `--help` lists its config keys with their defaults (from the dataclasses); `ditscale --version`."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from ditcore.config import ConfigError, to_dict
from jobs.cli import main
from jobs.sweep.config import SweepConfig
from jobs.train.config import TrainConfig
from pipelines.cli.config_args import describe_keys
from pipelines.infra.config_files import load_config
from pipelines.precompute.job import PrecomputeConfig
from tests.conftest import REPO_ROOT

CONFIG_JOBS = [
    ("train", TrainConfig, "configs/train/tiny.yaml", "optim.lr=0.0025", ("optim", "lr"), 0.0025),
    ("sweep", SweepConfig, "configs/sweep/tiny.yaml", "base.optim.lr=0.0025", ("base", "optim", "lr"), 0.0025),
    ("precompute", PrecomputeConfig, "configs/precompute/builtin.yaml", "source.count=77", ("source", "count"), 77),
]


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.mark.parametrize("job,cls,config,override,path,value", CONFIG_JOBS, ids=[j[0] for j in CONFIG_JOBS])
def test_print_config_is_the_resolved_config(cwd, capsys, job, cls, config, override, path, value):
    cfg_path = str(REPO_ROOT / config)
    assert main([job, "--config", cfg_path, override, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(load_config(cls, cfg_path, [override]))
    node = printed
    for key in path:
        node = node[key]
    assert node == value  # the override is applied
    assert os.listdir(cwd) == []  # nothing ran: no runs, no MLflow store, no output


@pytest.mark.parametrize("job,cls", [(j[0], j[1]) for j in CONFIG_JOBS])
def test_help_lists_every_config_key_with_its_default(capsys, job, cls):
    with pytest.raises(SystemExit) as e:
        main([job, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--print-config" in out
    lines = describe_keys(cls)
    assert len(lines) > 10 and all(line in out for line in lines)
    # a nested default as the dataclass declares it (not written twice)
    nested = [
        (f.name, f.default_factory())  # type: ignore[misc]
        for f in dataclasses.fields(cls)
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())  # type: ignore[misc]
    ]
    # what a value means, from the comment beside the field in the dataclass's source
    if cls is TrainConfig:
        assert "  eval.num_samples: int = 0  # 0 disables FID" in out
        assert "  checkpoint.every_n_steps: int = 0  # 0: only at budget points and the end" in out
    name, sub_obj = nested[0]
    sub = dataclasses.fields(sub_obj)[0]
    assert f"  {name}.{sub.name}: " in out and f"= {getattr(sub_obj, sub.name)!r}" in out


def test_bad_override_is_named(cwd, capsys):
    assert main(["train", "--config", str(REPO_ROOT / "configs/train/tiny.yaml"), "optim.lrr=1", "--print-config"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    # A text field given a value that reads as a number: the error says how to quote it, and quoting works.
    tiny = ["train", "--config", str(REPO_ROOT / "configs/train/tiny.yaml")]
    assert main([*tiny, "run.name=0001", "--print-config"]) == 2
    assert "run.name: expected a string, got the number or boolean 1.0; " in capsys.readouterr().err
    assert main([*tiny, 'run.name="0001"', "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"]["name"] == "0001"


def test_evaluate_print_config(cwd, capsys):

    from ditcore.checkpoint import save_checkpoint
    from ditcore.models import build_model, config_to_dict

    model = build_model("DiT-T/2", num_classes=4, input_size=8, in_channels=3)
    config = {"model": config_to_dict(model.config), "data": {"space": "pixel", "manifest": "/data/lat"}}
    ckpt = str(save_checkpoint(cwd / "ckpt", model=model, config=config, state={}))
    assert main(["evaluate", ckpt, "--steps", "7", "--sampler", "ddim", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == {
        "checkpoint": ckpt,
        "data": "/data/lat",  # resolved from the checkpoint's config.json
        "num_samples": 256,
        "sampler": "ddim",
        "steps": 7,
        "guidance": 1.0,
        "seed": 0,
        "num_actors": 1,
        "classifier": None,
    }
    assert main(["evaluate", ckpt, "--sampler", "plms", "--print-config"]) == 2
    assert "'plms'" in capsys.readouterr().err
    # A missing classifier is named before any sample is drawn.
    assert main(["evaluate", ckpt, "--classifier", str(cwd / "no-classifier"), "--print-config"]) == 2
    assert "--classifier" in capsys.readouterr().err


def test_serve_print_config_and_help(cwd, capsys):
    argv = ["serve", "--checkpoint", "/ckpt/step_1", "--port", "8123", "--set", "Sampler.user_config.default_steps=7"]
    assert main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["args"]["checkpoint"] == "/ckpt/step_1" and printed["args"]["champion"] is False
    assert printed["deployments"]["Sampler"]["user_config"]["default_steps"] == 7
    assert printed["http_options"]["port"] == 8123
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "use_ema: bool = True" in out and "champion: bool = False" in out


def test_quickstart_print_config(cwd, capsys):
    assert main(["quickstart", "--tiny", "--out", str(cwd / "qs"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["mode"]["name"] == "tiny" and printed["out"] == str(cwd / "qs")
    assert not (cwd / "qs").exists()
    assert main(["quickstart", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["mode"]["name"] != "tiny"


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("ditscale ") and out != "ditscale unknown"


def _exit_code(argv: list[str]) -> int:
    """main(argv)'s exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["models", "--latent-size", "0"], "argument --latent-size: must be >= 1, got 0"),
        (["models", "--latent-size", "7"], "--latent-size 7: no preset's patch size divides it"),
        (["flops", "MMDiT-d2", "--text-tokens", "-5"], "argument --text-tokens: must be >= 1, got -5"),
        (["data", "export-builtin", "--out", "x", "--count", "-1"], "argument --count: must be >= 1, got -1"),
        (["data", "classifier", "--source", "x", "--test-limit", "-1"], "argument --test-limit: must be >= 1, got -1"),
        (["fit", "--experiment", "e", "--n-boot", "0"], "argument --n-boot: must be >= 1, got 0"),
        (["fit", "--experiment", "e", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
        (["concepts", "missing", "--seed", str(2**80)], "argument --seed: must be at most 4294967295"),
        (["serve", "--port", "99999", "--print-config"], "must be a port number in 1..65535, got 99999"),
        (["serve", "--config", "nope.yaml", "--checkpoint", "x", "--print-config"], "nope.yaml: config file not found"),
        (["sample", "--checkpoint", "x", "--device", "tpu"], "--device 'tpu': not a torch device"),
        (["distill", "runs/a/ck", "teacher=runs/b/ck"], "teacher='runs/b/ck' contradicts the teacher argument"),
        (["sample", "--checkpoint", "x", "--device", "meta"], "--device 'meta': sampling runs on cpu or cuda[:N]"),
        (["sample", "--checkpoint", "x", "--sampler", "ddim", "--eta", "1e308"], "--eta 1e+308: DDIM's eta is in"),
        (["sample", "--checkpoint", "x", "--eta", "0.5"], "--eta 0.5: only --sampler ddim uses it"),
        (["quickstart", "--data", "nodata"], "--data 'nodata': not 'fashion-mnist', 'emoji' or an existing folder"),
        (["fit", "--experiment", "e", "--out", "afile/sub"], "--out 'afile/sub': output directory 'afile/sub': "),
        (["loadtest", "--url", "http://127.0.0.1:9", "--timeout", "0"], "--timeout: must be a finite number > 0"),
        (["evaluate", "missing", "--data", "afile"], "missing: checkpoint directory does not exist"),
        (["evaluate", "afile", "--data", "afile"], "afile: is a file, not a checkpoint directory"),
        (["concepts", "missing", "--response", "red", "--sampler", "bogus"], "--sampler 'bogus': one of ddpm"),
        (["concepts", "missing", "--response", "teal"], "--response 'teal': one of the built-in colours"),
        (["concepts", "s3://b/ck", "--out", "afile"], "--out 'afile': is a file, not a directory"),
        (["promote", "--experiment", "e", "--alias", "v3"], "--alias 'v3': reserved by the registry"),
        (["promote", "--experiment", "e", "--model-name", "a/b"], "--model-name 'a/b': a registered model name"),
        (["data", "classifier", "--source", "x", "--lr", "inf"], "argument --lr: must be a finite number > 0"),
        (["data", "train-vae", "lr=inf"], "lr: must be a finite number > 0, got inf"),
        (["data", "train-vae", "kl_weight=nan"], "kl_weight: must be a finite number >= 0, got nan"),
        (["data", "train-vae", "norm_num_groups=0"], "norm_num_groups: must be >= 1, got 0"),
        (["data", "train-features", "lr=-1"], "lr: must be a finite number > 0, got -1.0"),
        (["loadtest", "--url", "not-a-url"], "--url 'not-a-url': expected an http(s) URL"),
        (["loadtest", "--url", "http://127.0.0.1:9", "--concurrency", "0"], "every level must be >= 1"),
        (["loadtest", "--url", "http://127.0.0.1:9", "--warmup", "-5"], "--warmup: must be >= 0, got -5"),
        (["loadtest", "--url", "http://127.0.0.1:9", "--steps", "0"], "--steps: must be >= 1, got 0"),
        (["loadtest", "--url", "http://127.0.0.1:9", "--body", '{"seed": 3}'], "leave 'seed' out"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_values_are_one_line_errors_that_name_them_and_write_nothing(cwd, capsys, argv, message):
    (cwd / "afile").write_text("")
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in cwd.iterdir()) == ["afile"]  # no output directory, no mlflow.db


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "s3://bucket/ckpt", "--data", "afile"],
        ["ems", "s3://bucket/ckpt"],
        ["concepts", "s3://bucket/ckpt", "--response", "red", "--out", "plots"],
    ],
    ids=lambda v: v[0],
)
def test_a_failure_at_run_time_exits_1_not_2(cwd, capsys, monkeypatch, argv):
    """Exit 2 says "your input is wrong"; an s3 endpoint that does not answer is not the user's input."""
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for var, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    (cwd / "afile").write_text("")
    assert _exit_code(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ditscale {argv[0]}: error: ") and "Traceback" not in err, err


def test_serve_champion_follows_the_alias_given(cwd, capsys, monkeypatch):
    """`ditscale promote --alias NAME` keeps a sweep's champion apart; `serve --champion --alias NAME` serves it
    (the replicas resolve the alias the same way: resolve_checkpoint). --alias with --checkpoint is refused."""
    from mlflow import MlflowClient

    from serve.app_args import AppArgs
    from serve.sampler import resolve_checkpoint

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("ditscale")
    for alias, ckpt in (("champion", "/runs/a/step_1"), ("sweep-b", "/runs/b/step_2")):
        mv = client.create_model_version("ditscale", source=ckpt, tags={"checkpoint": ckpt})
        client.set_registered_model_alias("ditscale", alias, mv.version)
    argv = ["serve", "--champion", "--tracking-uri", uri, "--print-config"]
    assert main([*argv, "--alias", "sweep-b"]) == 0
    args = yaml.safe_load(capsys.readouterr().out)["args"]
    assert args["alias"] == "sweep-b" and args["champion"] is True
    assert resolve_checkpoint(AppArgs(**args))[0] == "/runs/b/step_2"
    assert main(argv) == 0
    args = yaml.safe_load(capsys.readouterr().out)["args"]
    assert args["alias"] == "champion" and resolve_checkpoint(AppArgs(**args))[0] == "/runs/a/step_1"
    assert main(["serve", "--checkpoint", "/runs/a/step_1", "--alias", "sweep-b", "--print-config"]) == 2
    assert "--alias picks a registered model version" in capsys.readouterr().err
    # The same where the checkpoint comes from the config's args, and for --tracking-uri: each was accepted and
    # never read (the app loads the checkpoint).
    assert main(["serve", "--checkpoint", "/runs/a/step_1", "--tracking-uri", uri, "--print-config"]) == 2
    assert "--tracking-uri picks a registered model version" in capsys.readouterr().err
    from serve.deploy import DEFAULT_CONFIG

    cfg = yaml.safe_load(open(DEFAULT_CONFIG))
    cfg["applications"][0]["args"] = {"checkpoint": "/runs/a/step_1"}
    (cwd / "serve.yaml").write_text(yaml.safe_dump(cfg))
    conf = ["serve", "--config", str(cwd / "serve.yaml"), "--print-config"]
    assert main([*conf, "--model-name", "other"]) == 2
    assert "--model-name picks a registered model version" in capsys.readouterr().err
    assert "(this app serves /runs/a/step_1)" in (main([*conf, "--alias", "b"]), capsys.readouterr().err)[1]
    assert main(conf) == 0


@pytest.mark.parametrize(
    "argv,key",
    [
        (
            ["train", "--config", "configs/train/tiny.yaml", "checkpoint.storage=gs://bucket/runs", "--validate-only"],
            "checkpoint.storage",
        ),
        (["sweep", "--config", "configs/sweep/tiny.yaml", "output=S3://bucket/sweeps", "--validate-only"], "output"),
        (["precompute", "--config", "configs/precompute/builtin.yaml", "output=s3:/bucket/latents"], "output"),
    ],
    ids=["train", "sweep", "precompute"],
)
def test_a_storage_scheme_other_than_s3_is_refused_not_made_a_local_folder(cwd, capsys, argv, key):
    """gs://, S3:// and s3:/ were taken for local folders named `gs:` (precompute created ./gs:/bucket/...)."""
    argv = [str(REPO_ROOT / a) if a.startswith("configs/") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{key}: '" in err and "has the scheme" in err and "local paths and s3:// URIs only" in err, err
    assert not list(cwd.iterdir())  # nothing written here


def test_a_key_given_twice_and_broken_yaml_are_one_line_errors(cwd, capsys):
    """YAML keeps the last of two equal keys silently (`optim: {lr: 0.01}`, then `optim: {warmup_steps: 5}` lost
    the learning rate); a Serve config with a bad value or broken YAML gave a pydantic or YAML traceback."""
    (cwd / "t.yaml").write_text("optim:\n  lr: 0.01\ndata:\n  batch_size: 8\noptim:\n  warmup_steps: 5\n")
    assert main(["train", "--config", str(cwd / "t.yaml"), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "key 'optim' given twice in one mapping (lines 1 and 5)" in err and len(err.strip().splitlines()) == 1
    # A YAML merge (`<<: *anchor`) and a key set again over it are not a key given twice (they were refused).
    (cwd / "m.yaml").write_text(
        "optim: &o {lr: 0.01, warmup_steps: 5}\nx: &d {batch_size: 8}\ndata: {<<: *d, batch_size: 4}\n"
    )
    from pipelines.infra.config_files import read_yaml

    assert read_yaml(cwd / "m.yaml")["data"] == {"batch_size": 4}
    (cwd / "u.yaml").write_text("? [1, 2]\n: 3\n")
    with pytest.raises(
        ConfigError, match="invalid YAML at line 1, column 3: while constructing a mapping found unhashable"
    ):
        read_yaml(cwd / "u.yaml")
    serve_cfg = (REPO_ROOT / "serve" / "config.yaml").read_text()
    assert "proxy_location: EveryNode" in serve_cfg
    (cwd / "bad.yaml").write_text(serve_cfg.replace("proxy_location: EveryNode", "proxy_location: Everywhere"))
    (cwd / "broken.yaml").write_text("applications: [\n")
    for name, words in (
        ("bad.yaml", "not a Serve config: proxy_location: Input should be"),
        ("broken.yaml", "invalid YAML at line 2, column 1"),
    ):
        assert main(["serve", "--config", str(cwd / name), "--checkpoint", "/ckpt/step_1", "--print-config"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_serve_numbers_and_a_missing_local_checkpoint_are_named_before_ray(cwd, capsys, monkeypatch):
    """These were accepted and failed (or waited "-5 s") only once Ray and Serve were up."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for argv, words in (
        (["--checkpoint", str(cwd / "nope")], "no such checkpoint directory"),
        (["--checkpoint", "gs://b/ck"], "has the scheme 'gs'"),
        (["--checkpoint", "/x", "--ready-timeout", "-5"], "--ready-timeout: must be a finite number > 0"),
        (["--checkpoint", "/x", "--num-gpus", "-1"], "--num-gpus: must be a finite number >= 0"),
        (
            ["--checkpoint", "/x", "--set", "Sampler.ray_actor_options.num_cpus=-1", "--print-config"],
            "deployments.Sampler.ray_actor_options.num_cpus: Input should be greater than or equal to 0",
        ),
        (
            ["--checkpoint", "/x", "--set", "Sampler.autoscaling_config.max_replicas=0", "--print-config"],
            "deployments.Sampler.autoscaling_config.max_replicas must be >= 1, got 0",
        ),
        (
            ["--checkpoint", "/x", "--set", "Sampler.num_replicas=-2", "--print-config"],
            "deployments.Sampler: Manually setting num_replicas is not allowed when autoscaling_config is provided",
        ),
    ):
        try:
            code = main(["serve", *argv])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, (argv, err)
    assert not list(cwd.iterdir())


@pytest.mark.parametrize("module", ["jobs.cli", "jobs.train", "jobs.sweep", "pipelines.precompute"])
def test_every_python_dash_m_entry_point_runs(module, tmp_path):
    """`python -m jobs.train` (docs/train.md) imported a `main` the redesign had moved: an ImportError."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
