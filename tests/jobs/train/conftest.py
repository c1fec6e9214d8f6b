"""Shared fixtures of the training-job tests."""

from __future__ import annotations

import pytest

from tests.jobs._train_helpers import local_ray, make_latent_dataset


@pytest.fixture(scope="module")
def ray_local():
    """A fresh local 4-CPU Ray shared by a module's tests."""
    yield from local_ray(4)


@pytest.fixture(scope="module")
def data8(tmp_path_factory) -> str:
    """8 text-conditional rows ((L, D, Dp) = (8, 16, 16)) = one global batch per epoch, so every step sees the same
    rows whatever the worker split."""
    return make_latent_dataset(tmp_path_factory.mktemp("lat8"), n=8, num_classes=None, text=(8, 16, 16))
