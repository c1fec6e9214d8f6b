"""Sample grids in MLflow (sqlite store): what is logged is what the client reads back, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.infra.tracking import client as get_client
from pipelines.infra.tracking import ensure_experiment, has_artifact, log_checkpoint_grid, log_sample_grid


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = ensure_experiment(client, "images")
    return client, client.create_run(exp_id).info.run_id


def _read(client, run_id, path, tmp_path):
    return np.asarray(Image.open(client.download_artifacts(run_id, path, str(tmp_path / "dl"))))


def test_grid_round_trip(run, tmp_path):
    client, run_id = run
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 4, 3), dtype=np.uint8)  # 5 images of 6x4 px -> 3 columns, 2 rows
    assert log_sample_grid(client, run_id, images, "samples/step_00000010.png") == "samples/step_00000010.png"
    assert has_artifact(client, run_id, "samples/step_00000010.png")
    grid = _read(client, run_id, "samples/step_00000010.png", tmp_path)
    assert grid.shape == (12, 12, 3)
    for i, img in enumerate(images):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(grid[r * 6 : (r + 1) * 6, c * 4 : (c + 1) * 4], img)
    np.testing.assert_array_equal(grid[6:, 8:], 0)  # the unused sixth cell stays black
    grid = _read(client, run_id, log_sample_grid(client, run_id, images, "row.png", cols=5), tmp_path)
    np.testing.assert_array_equal(grid, np.concatenate(list(images), axis=1))


def test_bad_images_are_refused_before_anything_is_written(run):
    client, run_id = run
    with pytest.raises(ValueError, match=r"float64 \(2, 4, 4, 3\)"):
        log_sample_grid(client, run_id, np.zeros((2, 4, 4, 3)), "samples/x.png")
    with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
        log_sample_grid(client, run_id, np.zeros((4, 4, 3), np.uint8), "samples/x.png")
    with pytest.raises(ValueError, match="'samples/x.jpg'"):
        log_sample_grid(client, run_id, np.zeros((1, 4, 4, 3), np.uint8), "samples/x.jpg")
    assert client.list_artifacts(run_id) == []


def test_checkpoint_grid_is_logged_once(run, tmp_path):
    """A budget point's grid: the checkpoint's first evaluation samples; a re-evaluated point logs nothing new."""
    from tests.jobs._train_helpers import perturbed_model, save_model_checkpoint

    client, run_id = run
    model = perturbed_model("DiT-T/2", num_classes=4, input_size=8, in_channels=3)
    ckpt = save_model_checkpoint(tmp_path / "ckpt", model, {"space": "pixel"})
    kw = {"sampler": "euler", "steps": 2, "seed": 3, "n": 6}
    assert log_checkpoint_grid(client, run_id, ckpt, "samples/step_00000001.png", **kw) == "samples/step_00000001.png"
    assert log_checkpoint_grid(client, run_id, ckpt, "samples/step_00000001.png", **kw) is None
    grid = _read(client, run_id, "samples/step_00000001.png", tmp_path)
    assert grid.shape == (2 * 8, 3 * 8, 3)

    from pipelines.generation import GenerationPipeline, SamplerSettings

    pipe = GenerationPipeline.from_checkpoint(ckpt, device="cpu")
    # labels cycle over the classes, seeds follow evaluation's rule: image i of eval seed s has seed s*1_000_003+i
    want = pipe.generate_labels([0, 1, 2, 3, 0, 1], [3 * 1_000_003 + i for i in range(6)], SamplerSettings("euler", 2))
    got = np.stack([grid[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] for r in range(2) for c in range(3)])
    np.testing.assert_array_equal(got, want)
