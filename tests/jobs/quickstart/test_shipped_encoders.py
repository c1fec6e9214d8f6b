"""The shipped built-in encoders (assets/encoders/builtin): used only when trained exactly as the run would train
them, checked byte for byte, and retrained in-run when the config, data or code differ or when asked."""

from __future__ import annotations

import shutil
import time

import pytest

from jobs.quickstart import shipped
from jobs.quickstart.modes import make_mode
from jobs.quickstart.runner import Context
from jobs.quickstart.stages import encoders


def _cfg(ctx: Context, kind: str):
    overrides = encoders._vae_overrides(ctx) if kind == "vae" else encoders._features_overrides(ctx)
    return encoders._resolved(kind, overrides)


@pytest.mark.parametrize("kind", shipped.KINDS)
def test_the_shipped_encoders_are_the_full_quickstarts(kind, tmp_path):
    """Fails after any change to the encoders' configs, data generator or training code: run `make encoders`."""
    ctx = Context(tmp_path, make_mode(tiny=False), time.monotonic())
    entry, why = shipped.match(kind, _cfg(ctx, kind))
    assert entry is not None, f"the shipped {kind} no longer matches the full quickstart ({why}): run `make encoders`"
    shipped.verify(kind, entry, shipped.SHIPPED_DIR / kind)
    assert entry["files"][shipped.weights_file(kind)] == shipped.sha256_file(
        shipped.SHIPPED_DIR / kind / shipped.weights_file(kind)
    )


def test_code_fingerprint_ignores_docstrings_and_comments_not_code(tmp_path):
    for rel in shipped._CODE["vae"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shipped.REPO_ROOT / rel, tmp_path / rel)
    before = shipped.code_fingerprint("vae", tmp_path)
    assert before == shipped.code_fingerprint("vae")
    path = tmp_path / "pipelines/encoders/train_vae.py"
    src = path.read_text()
    path.write_text(src.replace('"""Train, measure', '"""Reworded. Train, measure', 1) + "\n# a comment\n")
    assert shipped.code_fingerprint("vae", tmp_path) == before
    path.write_text(src.replace("kl_weight: float = 1e-6", "kl_weight: float = 1e-5", 1))
    assert shipped.code_fingerprint("vae", tmp_path) != before


def test_ship_use_retrain_and_refuse_a_changed_file(tmp_path):
    ship = tmp_path / "shipped"
    manifest = encoders.ship_encoders(ship, tiny=True)
    assert set(manifest) == {"vae", "features"}

    # A run with the same (tiny) config copies them, byte for byte, and says so.
    ctx = Context(tmp_path / "run", make_mode(tiny=True), time.monotonic(), shipped_dir=ship)
    for kind, run in (("vae", encoders.vae_run), ("features", encoders.features_run)):
        rec = run(ctx)
        assert rec["source"] == "shipped"
        assert rec["sha256"] == rec["shipped_sha256"] == manifest[kind]["files"][shipped.weights_file(kind)]
        for name, sha in manifest[kind]["files"].items():
            assert shipped.sha256_file(ctx.path(kind) / name) == sha
    good = (ctx.path("vae") / "diffusion_pytorch_model.safetensors").read_bytes()

    # --train-encoders trains in the run: same machine, same threads -> the same weights; the stage hash changes.
    retrain = Context(
        tmp_path / "retrain", make_mode(tiny=True), time.monotonic(), train_encoders=True, shipped_dir=ship
    )
    rec = encoders.vae_run(retrain)
    assert rec["source"] == "trained" and rec["sha256"] == rec["shipped_sha256"]
    assert encoders.vae_config(retrain)["train_in_run"] and not encoders.vae_config(ctx)["train_in_run"]
    # The stage hash covers the code that trains the encoder: after an edit of it a rerun trains (it reused the
    # stage, still reporting "shipped").
    import shutil

    from jobs.quickstart.shipped import _CODE, REPO_ROOT

    assert encoders.vae_config(ctx)["code"] == shipped.code_fingerprint("vae")
    edited = tmp_path / "edited"
    for rel in _CODE["vae"]:
        (edited / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, edited / rel)
    first = edited / _CODE["vae"][0]
    first.write_text(first.read_text() + "\n_EDITED = 1\n")
    assert shipped.code_fingerprint("vae", edited) != shipped.code_fingerprint("vae")

    # A changed shipped file is an error naming it and both hashes; the run's earlier copy is left as it was.
    weights = ship / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(
        shipped.ShippedEncoderError, match=r"diffusion_pytorch_model\.safetensors has sha256 [0-9a-f]{64}"
    ):
        encoders.vae_run(ctx)
    assert (ctx.path("vae") / "diffusion_pytorch_model.safetensors").read_bytes() == good

    # A different config is trained in the run, and the reason names the key.
    mode = make_mode(tiny=True)
    mode.vae["lr"] = 1e-3
    other = Context(tmp_path / "other", mode, time.monotonic(), shipped_dir=ship)
    entry, why = shipped.match("vae", _cfg(other, "vae"), ship)
    assert entry is None and "lr: 0.002 -> 0.001" in why
    rec = encoders.vae_run(other)
    assert rec["source"] == "trained" and "shipped_sha256" not in rec
    assert rec["sha256"] == shipped.sha256_file(other.path("vae") / "diffusion_pytorch_model.safetensors")


def test_sources_other_than_the_built_in_data_are_never_shipped():
    from pipelines.encoders.train_vae import TrainVAEConfig
    from pipelines.infra.config_files import load_config

    cfg = load_config(TrainVAEConfig, base={"source": {"kind": "parquet", "path": "/data/train"}})
    assert shipped.fingerprint("vae", cfg) is None
    assert shipped.match("vae", cfg)[0] is None


def test_only_the_full_quickstarts_encoders_are_shipped_from_the_command_line(capsys):
    from jobs.cli.quickstart import main

    with pytest.raises(SystemExit) as exc:
        main(["--ship-encoders", "--tiny"])
    assert exc.value.code == 2 and "drop --tiny" in capsys.readouterr().err
