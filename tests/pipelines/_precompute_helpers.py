"""Small local artefacts for the precompute tests: tiny VAE / CLIP / T5 checkpoints and image corpora.

Everything is built offline from small configs with random weights and saved with `save_pretrained`,
so the tests load them back through the same loaders a cluster run uses for real checkpoints.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

WORDS = [
    "a",
    "the",
    "red",
    "green",
    "blue",
    "small",
    "large",
    "circle",
    "square",
    "top",
    "left",
    "and",
    "at",
    "cat",
    "dog",
    "photo",
    "of",
]


def tiny_vae(path: Path, **kwargs) -> Path:
    """A randomly initialised 3-level AutoencoderKL (downsample 4, 4 latent channels) in diffusers format; latent
    scale 0.5 and shift 0.1 unless `kwargs` (to AutoencoderKL) say otherwise."""
    from tests.pipelines.encoders._tiny import tiny_autoencoder

    scale = {"scaling_factor": 0.5, "shift_factor": 0.1, **kwargs}
    tiny_autoencoder((8, 8, 8), norm_num_groups=4, sample_size=32, **scale).save_pretrained(path)
    return path


def tiny_clip(path: Path, with_projection: bool = True) -> Path:
    """A 2-layer CLIP text model (hidden 32, projection 16) with a real CLIPTokenizer over a tiny BPE vocab."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE as CLIP uses it: every printable byte char, the words with the end-of-word marker.
    chars = sorted({c for w in WORDS for c in w})
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for w in WORDS:
        # Merge left to right so each word becomes one token "word</w>".
        toks = list(w[:-1]) + [w[-1] + "</w>"]
        while len(toks) > 1:
            a, b = toks[0], toks[1]
            merges.append(f"{a} {b}")
            vocab.setdefault(a + b, len(vocab))
            toks = [a + b] + toks[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)
    model.save_pretrained(path)
    return path


def with_minilm_tokenizer(path: Path, model_cls, make_config, seed: int = 0) -> Path:
    """A randomly initialised `model_cls(make_config(tokenizer))` (after torch.manual_seed(seed)) saved at `path`, with
    the MiniLM (BERT) tokenizer it is configured for saved beside it (no sentencepiece needed)."""
    import torch
    from transformers import AutoTokenizer

    from pipelines.encoders.text import minilm_path

    path.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    model_cls(make_config(tok)).save_pretrained(path)
    return path


def tiny_t5(path: Path) -> Path:
    """A 2-layer T5 encoder (d_model 32) with the MiniLM (BERT) tokenizer saved beside it (no sentencepiece needed)."""
    from transformers import T5Config, T5EncoderModel

    def config(tok) -> T5Config:
        return T5Config(
            vocab_size=tok.vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            pad_token_id=tok.pad_token_id,
            decoder_start_token_id=tok.pad_token_id,
        )

    return with_minilm_tokenizer(path, T5EncoderModel, config)


def tiny_feature_net(path: Path) -> Path:
    """A randomly initialised (narrow) built-in attribute feature net, saved as load_feature_net reads it."""
    import torch

    from ditcore.metrics.features import BuiltinAttributeNet, save_feature_net

    torch.manual_seed(0)
    return save_feature_net(BuiltinAttributeNet(image_size=32, width=4, cell_dim=2), path)


# The image size the tiny VAE and feature net are built for, and so the precompute tests' image_size.
IMAGE_SIZE = 32


class _BuiltOnFirstUse:
    """A TinyModels attribute: the path (str) of `build(root / <attribute name>)`, built on first access and kept."""

    def __init__(self, build):
        self.build = build

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, models, owner=None):
        if models is None:
            return self
        path = models.__dict__[self.name] = str(self.build(models.root / self.name))
        return path


class TinyModels:
    """The tiny checkpoints above under `root`, each built on first use and then reused."""

    vae = _BuiltOnFirstUse(tiny_vae)
    feature_net = _BuiltOnFirstUse(tiny_feature_net)
    clip = _BuiltOnFirstUse(tiny_clip)
    t5 = _BuiltOnFirstUse(tiny_t5)

    def __init__(self, root: Path):
        self.root = Path(root)


def precompute_config(out: Path, models: TinyModels, source: dict, **sections):
    """PrecomputeConfig of a run of `source` into `out` at IMAGE_SIZE without progress bars, encoding with the tiny VAE
    and FID stats from the tiny feature net; `sections` (text, compute, ...; vae or fid: None or another) are added or
    replace those."""
    from ditcore.config import from_dict
    from pipelines.precompute.job import PrecomputeConfig

    data = {"output": str(out), "image_size": IMAGE_SIZE, "progress": False, "source": source, **sections}
    if "vae" not in data:  # built only when used
        data["vae"] = {"path": models.vae}
    if "fid" not in data:
        data["fid"] = {"feature_net": models.feature_net}
    return from_dict(PrecomputeConfig, data)


def feature_dim(path: Path) -> int:
    """FID feature dimension of a saved feature net (from its config.json)."""
    return int(json.loads((Path(path) / "config.json").read_text())["feature_dim"])


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    """Encode an array (or a converted PIL mode) to image bytes."""
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def random_image(seed: int, size: int = 40) -> np.ndarray:
    """A deterministic random RGB uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (size, size + 4, 3), dtype=np.uint8)


def make_folder(root: Path, n_per_class: int = 3, classes=("cat", "dog"), captions: bool = True) -> Path:
    """root/<class>/<i>.png (+ .txt captions)."""
    k = 0
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            (root / c / f"{i:03d}.png").write_bytes(png_bytes(random_image(k)))
            if captions:
                (root / c / f"{i:03d}.txt").write_text(f"a photo of a {c} {i}")
            k += 1
    return root


def make_parquet(path: Path, n: int = 6, rows_per_group: int = 2) -> Path:
    """A parquet file with columns img (PNG bytes), text, cls."""
    table = pa.table(
        {
            "img": [png_bytes(random_image(100 + i)) for i in range(n)],
            "text": [f"a small red circle {i}" for i in range(n)],
            "cls": pa.array([i % 3 for i in range(n)], pa.int64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def make_tar(path: Path, start: int, n: int) -> Path:
    """A WebDataset tar with n samples key.png / key.txt / key.cls."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for i in range(start, start + n):
            for ext, data in (
                ("png", png_bytes(random_image(200 + i))),
                ("txt", f"a blue square {i}".encode()),
                ("cls", str(i % 2).encode()),
            ):
                info = tarfile.TarInfo(f"sample{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def make_bad_folder(root: Path, size: int = 32) -> dict[str, str]:
    """A folder of good and bad inputs; returns {relative path: expected reason keyword} for the bad ones."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "good").mkdir()
    for i in range(3):
        (root / "good" / f"ok{i}.png").write_bytes(png_bytes(random_image(300 + i, size + 8)))
        (root / "good" / f"ok{i}.txt").write_text(f"good image {i}")
    # Mode conversions that must succeed: palette, alpha, CMYK (JPEG), 16-bit gray, gray.
    modes = root / "modes"
    modes.mkdir()
    arr = random_image(400, size + 8)
    (modes / "palette.png").write_bytes(png_bytes(arr, "P"))
    (modes / "alpha.png").write_bytes(png_bytes(np.dstack([arr, np.full(arr.shape[:2], 128, np.uint8)])))
    (modes / "cmyk.jpg").write_bytes(png_bytes(arr, "CMYK", "JPEG"))
    (modes / "gray.png").write_bytes(png_bytes(arr[..., 0]))
    img16 = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)  # uint16 -> mode I;16
    buf = io.BytesIO()
    img16.save(buf, format="PNG")
    (modes / "gray16.png").write_bytes(buf.getvalue())
    for name in ("palette", "alpha", "cmyk", "gray", "gray16"):
        (modes / f"{name}.txt").write_text(f"a {name} image")
    bad = root / "bad"
    bad.mkdir()
    good_png = png_bytes(random_image(500, size + 8))
    (bad / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.pdf").write_bytes(b"%PDF-1.4 this is not an image")
    (bad / "garbage.jpg").write_bytes(os.urandom(300))
    (bad / "tiny.png").write_bytes(png_bytes(random_image(501, size // 2)))
    (bad / "nocaption.png").write_bytes(png_bytes(random_image(502, size + 8)))
    for name in ("truncated", "empty", "notes", "garbage", "tiny"):
        (bad / f"{name}.txt").write_text("caption")
    return {
        "bad/truncated.png": "truncated",
        "bad/empty.png": "empty",
        "bad/notes.pdf": "not an image",
        "bad/garbage.jpg": "not an image",
        "bad/tiny.png": "too small",
        "bad/nocaption.png": "missing caption",
    }


def ray_module():
    """Generator for a module-scoped fixture: a local 2-CPU Ray shared by the module's tests."""
    import ray

    started = not ray.is_initialized()
    if started:
        # address="local": always a fresh private cluster, even if someone ran `ray start` on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
