"""A name that is not a local directory gets its answer at once: local path, cached hub id, or an unreachable hub."""

from __future__ import annotations

import socket

import pytest

from pipelines.encoders.text import TextEncoderError, resolve_spec
from pipelines.encoders.vae import VAELoadError, load_vae
from pipelines.infra import hub


@pytest.fixture
def online_but_unreachable(monkeypatch):
    """Offline mode off, no proxy, and a hub endpoint on a loopback port that nothing listens on."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *hub._PROXY_VARS):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    return port


def test_hub_id_shapes():
    assert hub.looks_like_hub_id("org/name") and hub.looks_like_hub_id("name")
    for path in ("/abs/vae", "./vae", "~/vae", "a/b/c", ".hidden/vae", "org/"):
        assert not hub.looks_like_hub_id(path), path


def test_a_missing_dir_under_an_existing_one_is_named_as_such(tmp_path, monkeypatch, online_but_unreachable):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(VAELoadError, match=r"'outputs/vae': no such directory \(outputs/ exists here\); .*reached"):
        load_vae("outputs/vae")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextEncoderError, match=r"'outputs/enc': no such directory .*HF_HUB_OFFLINE is set"):
        resolve_spec("outputs/enc")


def test_an_uncached_id_with_the_hub_unreachable_fails_naming_the_endpoint(tmp_path, online_but_unreachable):
    port = online_but_unreachable
    for load, exc, what in ((load_vae, VAELoadError, "VAE"), (resolve_spec, TextEncoderError, "text encoder")):
        with pytest.raises(exc, match=rf"{what} 'no-org/no-model' .*cannot be reached at http://127.0.0.1:{port}"):
            load("no-org/no-model")


def test_offline_mode_fails_without_a_connection(monkeypatch, online_but_unreachable):
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(VAELoadError, match="not in the hub cache .*HF_HUB_OFFLINE is set"):
        load_vae("no-org/no-model")


def test_a_cached_id_passes(tmp_path, monkeypatch, online_but_unreachable):
    snap = tmp_path / "cache" / "models--some-org--cached-vae" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "some-org").mkdir()  # a local directory named like the org does not hide the cached id
    hub.check_hub_id("some-org/cached-vae", what="VAE")  # no error although the hub cannot be reached
    with pytest.raises(ValueError, match="cannot be reached"):
        hub.check_hub_id("some-org/other-vae", what="VAE")
