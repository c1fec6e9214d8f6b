"""Several text encoders joined SD3 style, with tiny random local encoders (no downloads): the joined shapes and
where each encoder's output lands, the masks, per-encoder dropout at its rate, and dropping an encoder at sampling
changing only its part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.encoders.text import (
    TextEncoderError,
    describe_parts,
    drop_text_parts,
    load_text_encoder,
    load_text_encoders,
    resolve_parts,
)
from tests.pipelines._precompute_helpers import tiny_clip, tiny_t5, with_minilm_tokenizer

TEXTS = ["a large red circle at the top left", "", "a small blue square and a cat", "the dog"]


def tiny_bert(path: Path, hidden: int = 24) -> Path:
    """A 1-layer BertModel (hidden 24) with the MiniLM tokenizer saved beside it."""
    from transformers import BertConfig, BertModel

    def config(tok) -> BertConfig:
        return BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=64,
        )

    return with_minilm_tokenizer(path, BertModel, config, seed=1)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    d = tmp_path_factory.mktemp("text-encoders")
    # CLIP (32-d states, 16-d projected pooled, 16 tokens) and BERT (24-d, 10 tokens) share positions on the feature
    # axis; T5 (32-d, 12 tokens, not pooled) is appended on the sequence axis.
    return [
        {"encoder": str(tiny_clip(d / "clip")), "name": "clip", "max_length": 16},
        {"encoder": str(tiny_bert(d / "bert")), "name": "bert", "max_length": 10, "join": "concat"},
        {"encoder": str(tiny_t5(d / "t5")), "name": "t5", "max_length": 12, "join": "append", "pooled": False},
    ]


@pytest.fixture(scope="module")
def joined(specs):
    return load_text_encoders(specs, dtype="float32")


@pytest.fixture(scope="module")
def singles(specs):
    return {s["name"]: load_text_encoder({"encoder": s["encoder"], "max_length": s["max_length"]}) for s in specs}


def test_joined_shapes_and_layout(joined, specs):
    assert (joined.max_length, joined.dim, joined.pooled_dim) == (16 + 12, 32 + 24, 16 + 24)
    by = {r["name"]: r for r in joined.layout}
    assert by["clip"]["seq"] == [0, 16] and by["clip"]["feat"] == [0, 32] and by["clip"]["pooled_slice"] == [0, 16]
    assert by["bert"]["seq"] == [0, 10] and by["bert"]["feat"] == [32, 56] and by["bert"]["pooled_slice"] == [16, 40]
    assert by["t5"]["seq"] == [16, 28] and by["t5"]["feat"] == [0, 32] and by["t5"]["pooled_slice"] is None
    out = joined.encode(TEXTS)
    assert out["text_emb"].shape == (4, 28, 56) and out["text_emb"].dtype == np.float16
    assert out["text_mask"].shape == (4, 28) and out["text_mask"].dtype == bool
    assert out["text_pooled"].shape == (4, 40)
    # The layout read from the configs alone (what precompute's manifest records) is the loaded one.
    layout, dims = describe_parts(specs)
    assert dims == {"max_length": 28, "dim": 56, "pooled_dim": 40}
    keys = ("name", "seq", "feat", "pooled_slice", "block", "dim", "pooled_dim", "max_length", "kind", "join")
    assert [{k: r[k] for k in keys} for r in layout] == [{k: r[k] for k in keys} for r in joined.layout]


def test_each_encoder_lands_in_its_slice_and_masks_join(joined, singles):
    out = joined.encode(TEXTS)
    ref = {n: e.encode(TEXTS) for n, e in singles.items()}
    emb, mask = out["text_emb"], out["text_mask"]
    np.testing.assert_array_equal(emb[:, :16, :32], ref["clip"]["text_emb"])
    np.testing.assert_array_equal(emb[:, :10, 32:], ref["bert"]["text_emb"])
    np.testing.assert_array_equal(emb[:, 16:, :32], ref["t5"]["text_emb"])
    assert not emb[:, 10:16, 32:].any() and not emb[:, 16:, 32:].any()  # padding is zero
    # Positions shared on the feature axis: the union of the members' masks; the appended block: T5's own mask.
    bert_mask = np.pad(ref["bert"]["text_mask"], ((0, 0), (0, 6)))
    np.testing.assert_array_equal(mask[:, :16], ref["clip"]["text_mask"] | bert_mask)
    np.testing.assert_array_equal(mask[:, 16:], ref["t5"]["text_mask"])
    np.testing.assert_array_equal(
        out["text_pooled"], np.concatenate([ref["clip"]["text_pooled"], ref["bert"]["text_pooled"]], 1)
    )


def test_dropping_an_encoder_at_sampling_changes_only_its_part(joined, specs):
    null = joined.encode([""])
    null = {k: v[0] for k, v in null.items()}
    full = joined.encode(TEXTS)
    no_t5 = load_text_encoders(specs, drop=["t5"], layout=joined.layout, null=null, dtype="float32")
    assert set(no_t5.encoders) == {"clip", "bert"}  # T5 is not even loaded
    out = no_t5.encode(TEXTS)
    np.testing.assert_array_equal(out["text_emb"][:, :16], full["text_emb"][:, :16])
    np.testing.assert_array_equal(out["text_pooled"], full["text_pooled"])  # T5 is not pooled
    np.testing.assert_array_equal(out["text_mask"][:, :16], full["text_mask"][:, :16])
    # T5's part is its slice of the null embedding, for every prompt; it differed from the prompts' T5 states.
    for i in range(len(TEXTS)):
        np.testing.assert_array_equal(out["text_emb"][i, 16:], null["text_emb"][16:])
        np.testing.assert_array_equal(out["text_mask"][i, 16:], null["text_mask"][16:])
    assert not np.array_equal(full["text_emb"][0, 16:], null["text_emb"][16:])
    # Dropping a CLIP-side member: only its features (and pooled slice) change.
    no_bert = load_text_encoders(specs, drop=["bert"], layout=joined.layout, null=null, dtype="float32")
    out = no_bert.encode(TEXTS)
    np.testing.assert_array_equal(out["text_emb"][:, :, :32], full["text_emb"][:, :, :32])
    np.testing.assert_array_equal(
        out["text_emb"][:, :16, 32:], np.broadcast_to(null["text_emb"][:16, 32:], (4, 16, 24))
    )
    np.testing.assert_array_equal(out["text_pooled"][:, :16], full["text_pooled"][:, :16])
    np.testing.assert_array_equal(out["text_pooled"][:, 16:], np.broadcast_to(null["text_pooled"][16:], (4, 24)))


def _cond_and_null(joined, n: int):
    rows = joined.encode(TEXTS)  # encoded once, tiled to n rows
    null = {k: torch.from_numpy(np.asarray(v[0])) for k, v in joined.encode([""]).items()}
    return {k: torch.from_numpy(np.concatenate([v] * (n // 4))) for k, v in rows.items()}, null


def test_per_encoder_dropout_rate_and_independence(joined):
    n = 4000
    cond, null = _cond_and_null(joined, n)
    probs = {"t5": 0.3, "bert": 0.5}
    g = torch.Generator().manual_seed(0)
    out = drop_text_parts(cond, null, joined.layout, probs, g)
    t5_null = (out["text_emb"][:, 16:, :32] == null["text_emb"][16:, :32]).flatten(1).all(1)
    bert_null = (out["text_emb"][:, :10, 32:] == null["text_emb"][:10, 32:]).flatten(1).all(1)
    t5_was_null = (cond["text_emb"][:, 16:, :32] == null["text_emb"][16:, :32]).flatten(1).all(1)
    live = ~t5_was_null  # rows whose caption is not the empty prompt
    for got, p in ((t5_null[live].float().mean(), 0.3), (bert_null[live].float().mean(), 0.5)):
        assert abs(float(got) - p) < 4 * (p * (1 - p) / int(live.sum())) ** 0.5
    both = (t5_null & bert_null)[live].float().mean()
    assert abs(float(both) - 0.15) < 4 * (0.15 * 0.85 / int(live.sum())) ** 0.5  # independent draws
    # CLIP is never dropped; a dropped T5 row carries the null's mask there, a kept one its own.
    assert torch.equal(out["text_emb"][:, :16, :32], cond["text_emb"][:, :16, :32])
    assert torch.equal(out["text_mask"][t5_null, 16:], null["text_mask"][16:].expand(int(t5_null.sum()), 12))
    kept = ~t5_null
    assert torch.equal(out["text_mask"][kept], cond["text_mask"][kept])
    assert torch.equal(out["text_pooled"][:, :16], cond["text_pooled"][:, :16])
    assert torch.equal(out["text_pooled"][bert_null, 16:], null["text_pooled"][16:].expand(int(bert_null.sum()), 24))


def test_no_per_encoder_dropout_draws_nothing(joined):
    cond, null = _cond_and_null(joined, 8)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert drop_text_parts(cond, null, joined.layout, {}, g) is cond
    assert drop_text_parts(cond, null, joined.layout, {"t5": 0.0}, g) is cond
    assert torch.equal(g.get_state(), state)


def test_bad_lists_name_the_problem(specs):
    with pytest.raises(TextEncoderError, match=r"text\[1\].join: 'side'"):
        resolve_parts([specs[0], {**specs[1], "join": "side"}])
    with pytest.raises(TextEncoderError, match="unique"):
        resolve_parts([specs[0], {**specs[1], "name": "clip"}])
    with pytest.raises(TextEncoderError, match=r"text\[0\].encoder: unknown text encoder 'nope'"):
        resolve_parts([{"encoder": "nope"}])
    with pytest.raises(TextEncoderError, match="pooled: true"):
        resolve_parts([{**specs[2], "join": "concat"}])
    with pytest.raises(TextEncoderError, match=r"text\[0\]: .*unexpected keyword"):
        resolve_parts([{**specs[0], "jion": "append"}])
    with pytest.raises(TextEncoderError, match="drop_text: unknown text encoder"):
        load_text_encoders(specs, drop=["t6"])
    with pytest.raises(TextEncoderError, match="needs the recorded layout"):
        load_text_encoders(specs, drop=["t5"])
