"""The serving path loads weights only from safetensors: a VAE or text encoder whose weights exist only as a
pickled .bin is refused with an error naming the place, for a local directory and for a hub id (from a local
hub cache, offline), while the same weights load when pickles are allowed (so the refusal is the flag's doing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.encoders.text import load_text_encoder
from pipelines.encoders.vae import VAELoadError, load_vae
from tests.conftest import REPO_ROOT
from tests.pipelines._precompute_helpers import tiny_clip
from tests.pipelines.encoders._tiny import tiny_autoencoder


def _tiny_vae():
    return tiny_autoencoder((8, 8))


def _bin_only_vae(path: Path) -> Path:
    _tiny_vae().save_pretrained(str(path), safe_serialization=False)
    assert (path / "diffusion_pytorch_model.bin").is_file() and not list(path.glob("*.safetensors"))
    return path


def test_local_bin_only_vae_is_refused(tmp_path):
    path = _bin_only_vae(tmp_path / "vae")
    with pytest.raises(VAELoadError, match=r"no \*\.safetensors weights"):
        load_vae(path, require_safetensors=True)
    assert load_vae(path).config.latent_channels == 4  # the pickle itself is loadable: the flag refuses it


def _hub_cache(cache: Path, repo_id: str, files: Path) -> None:
    """A hub cache entry for `repo_id` (what a download leaves behind) holding the files of `files`."""
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    snap = entry / "snapshots" / ("0" * 40)
    shutil.copytree(files, snap)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0" * 40)


def test_hub_id_bin_only_vae_is_refused(tmp_path):
    """A hub id resolves through the hub cache (offline); with only a .bin there the serving path refuses it."""
    cache = tmp_path / "hub"
    _hub_cache(cache, "acme/tiny-vae", _bin_only_vae(tmp_path / "vae"))
    code = (
        "import json, sys\n"
        "from pipelines.encoders.vae import load_vae\n"
        "out = {}\n"
        "for req in (True, False):\n"
        "    try:\n"
        "        load_vae('acme/tiny-vae', require_safetensors=req); out[str(req)] = 'loaded'\n"
        "    except Exception as e:\n"
        "        out[str(req)] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HOME", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["False"] == "loaded", out  # the cache entry is valid: pickles allowed, it loads
    assert out["True"] != "loaded" and "acme/tiny-vae" in out["True"] and "safetensors" in out["True"], out


def test_local_bin_only_text_encoder_is_refused(tmp_path):
    from transformers import CLIPTextModelWithProjection

    src = tiny_clip(tmp_path / "clip")
    dst = tmp_path / "clip-bin"
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    # The same weights as a pickled state dict, the file name transformers falls back to without safetensors.
    torch.save(CLIPTextModelWithProjection.from_pretrained(str(src)).state_dict(), dst / "pytorch_model.bin")
    assert not list(dst.glob("*.safetensors"))
    with pytest.raises(OSError) as err:  # transformers' error for weights not in the requested format
        load_text_encoder(str(dst), dtype="float32", require_safetensors=True)
    assert "safetensors" in str(err.value), str(err.value)
    assert load_text_encoder(str(dst), dtype="float32").dim == 32  # loadable when pickles are allowed
