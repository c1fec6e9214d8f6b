"""Shared fixtures of the pipeline tests."""

from __future__ import annotations

import pytest

from tests.pipelines._precompute_helpers import TinyModels, ray_module


@pytest.fixture(scope="module")
def ray_local():
    """A local 2-CPU Ray shared by a module's tests (ray_module); a module that reads through Ray asks for it with
    `pytestmark = [..., pytest.mark.usefixtures("ray_local")]`."""
    yield from ray_module()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyModels:
    """The tiny VAE / feature net / CLIP / T5 checkpoints of a module, each built on first use."""
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))
