"""Text encoders through the real loader: the shipped MiniLM default, tiny CLIP (with/without projection), tiny T5."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.encoders.text import TextEncoderError, load_text_encoder, resolve_spec
from tests.pipelines._precompute_helpers import tiny_clip, tiny_t5

TEXTS = ["a large red circle at the top left", "", "a small blue square and a cat"]


def _check(out: dict, n: int, length: int, dim: int, pooled: int) -> None:
    assert out["text_emb"].shape == (n, length, dim) and out["text_emb"].dtype == np.float16
    assert out["text_mask"].shape == (n, length) and out["text_mask"].dtype == bool
    assert out["text_pooled"].shape == (n, pooled) and out["text_pooled"].dtype == np.float16
    assert np.isfinite(out["text_emb"].astype(np.float32)).all()
    # Real tokens first, padding after; the empty prompt still has its special tokens.
    lengths = out["text_mask"].sum(1)
    assert (lengths >= 1).all() and lengths[0] > lengths[1]
    for row in out["text_mask"]:
        assert not row[row.argmin() :].any() or row.all()


def test_minilm_default_encoder():
    enc = load_text_encoder("minilm")
    out = enc.encode(TEXTS)
    _check(out, 3, 32, 384, 384)
    ident = enc.identity()
    assert ident["encoder"] == "minilm" and ident["dim"] == 384 and ident["max_length"] == 32
    # The sentence vector is the normalised masked mean, as all-MiniLM-L6-v2 defines it.
    assert np.allclose(np.linalg.norm(out["text_pooled"].astype(np.float32), axis=1), 1.0, atol=1e-2)
    # Same text -> same embedding regardless of the batch it is in.
    solo = enc.encode([TEXTS[0]])
    assert np.allclose(solo["text_emb"][0].astype(np.float32), out["text_emb"][0].astype(np.float32), atol=2e-3)


def test_loading_shows_no_progress_bar_and_keeps_the_setting(capfd):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        load_text_encoder("minilm")
        out, err = capfd.readouterr()
        assert "Loading weights" not in out + err
        assert hf_logging.is_progress_bar_enabled()  # the caller's setting is back
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


@pytest.mark.parametrize("projection", [True, False])
def test_tiny_clip_from_directory(tmp_path, projection):
    path = tiny_clip(tmp_path / "clip", with_projection=projection)
    enc = load_text_encoder(str(path), dtype="float32")
    out = enc.encode(TEXTS)
    _check(out, 3, 77, 32, 16 if projection else 32)
    assert enc.identity()["kind"] == "clip" and enc.identity()["max_length"] == 77


def test_tiny_t5_from_directory_with_max_length(tmp_path):
    path = tiny_t5(tmp_path / "t5")
    enc = load_text_encoder({"encoder": str(path), "max_length": 16})
    out = enc.encode(TEXTS)
    _check(out, 3, 16, 32, 32)
    assert enc.identity()["kind"] == "t5"


def test_bad_specs_name_the_problem(tmp_path):
    with pytest.raises(TextEncoderError, match="unknown text encoder 'not-a-model'"):
        resolve_spec("not-a-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="no config.json"):
        resolve_spec(str(tmp_path / "empty"))
    with pytest.raises(TextEncoderError, match="HF_HUB_OFFLINE"):
        resolve_spec("some-org/definitely-not-cached-model")
