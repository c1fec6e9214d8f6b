"""Code fingerprints: documentation edits leave them alone, any change to what the code does changes them. And the
environment record: the software and machine beside a run's numbers."""

from __future__ import annotations

import ast

import pytest

from pipelines.infra.code import (
    TRAINING_CODE,
    _stable_dump,
    env_tags,
    environment,
    environment_words,
    other_software,
    software_besides,
    software_versions,
    source_fingerprint,
    training_code_fingerprint,
)


def _tree(root, body: str) -> None:
    """A project with every TRAINING_CODE entry; `body` is ditcore/m.py."""
    for entry in TRAINING_CODE:
        path = root / entry
        if entry.endswith(".py"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"NAME = {entry!r}\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
    (root / "ditcore" / "m.py").write_text(body)
    (root / "jobs" / "train" / "loop.py").write_text("def step(x):\n    return x - 1\n")


def test_a_fingerprint_follows_the_code_not_its_documentation(tmp_path):
    code = 'def f(x):\n    """Double."""\n    return 2 * x\n'
    (tmp_path / "a.py").write_text(code)
    first = source_fingerprint(["a.py"], tmp_path)
    assert len(first) == 16
    (tmp_path / "a.py").write_text('"""A module."""\n\n\ndef f(x):  # twice\n    """Twice x."""\n    return 2*x\n')
    assert source_fingerprint(["a.py"], tmp_path) == first  # docstrings, comments and formatting
    (tmp_path / "a.py").write_text(code.replace("2 * x", "3 * x"))
    assert source_fingerprint(["a.py"], tmp_path) != first


def test_the_training_code_fingerprint_covers_every_training_module(tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    for root in (a, b, d):
        _tree(root, "K = 1\n")
    _tree(c, "K = 2\n")
    (b / "jobs" / "evaluation" / "new.py").write_text("X = 0\n")  # a new module under jobs/evaluation
    (d / "pipelines" / "generation.py").write_text("NAME = 'changed'\n")  # one file named in TRAINING_CODE
    (a / "jobs" / "sweep").mkdir()
    (a / "jobs" / "sweep" / "driver.py").write_text("Y = 0\n")
    fp = {r: training_code_fingerprint(r) for r in (a, b, c, d)}
    assert len(set(fp.values())) == 4 and all(len(v) == 16 for v in fp.values())
    (a / "jobs" / "sweep" / "driver.py").write_text("Y = 1\n")
    (a / "ditcore" / "m.py").write_text('"""Documented now."""\nK = 1  # one\n')
    training_code_fingerprint.cache_clear()
    assert training_code_fingerprint(a) == fp[a]  # the sweep's own code is not training code; docs do not count
    # A root without the training code is an error that names the missing path, not the hash of nothing.
    (a / "pipelines" / "encoders" / "text.py").unlink()
    training_code_fingerprint.cache_clear()
    with pytest.raises(FileNotFoundError, match="encoders/text.py does not exist"):
        training_code_fingerprint(a)
    # Without a root: the code this process imported (the repository's), which has every entry.
    assert len(training_code_fingerprint()) == 16


def test_the_training_fingerprint_leaves_out_the_empty_fields_newer_pythons_add():
    dumped = _stable_dump(ast.parse("def f(x):\n    return x\n"))
    # 3.12 adds an empty `type_params` to every function and class; 3.13 prints empty fields differently.
    assert "type_params" not in dumped and "=[]" not in dumped and "=None" not in dumped
    assert dumped.startswith("Module(body=[FunctionDef(name='f',args=arguments(args=[arg(arg='x')])")


# Classes, annotations, defaults, f-strings with format specs, async comprehensions: the syntax the project uses.
_SNIPPET = '''"""Module."""
import math


class Box:
    """A box."""

    size: int = 2

    def area(self, scale: float = 1.0) -> float:
        return math.prod([self.size, self.size]) * scale


def label(x: float, *args, key=None, **kw) -> str:
    return f"{x:.2f} {key!r}" if key else f"{x}"


async def fetch(items):
    async with items as it:
        return [i async for i in it if i is not None]
'''


def test_the_fingerprint_is_the_one_every_supported_python_gives(tmp_path):
    """The same hash on every supported Python: this value came out of CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0
    alike (ast.dump's text gave the shipped VAE's code three different hashes on those four, so a quickstart on 3.12
    would have retrained the shipped encoders). A Python whose syntax trees differ fails here, not in a user's
    sweep."""
    (tmp_path / "s.py").write_text(_SNIPPET)
    assert source_fingerprint(["s.py"], tmp_path) == "d065cba2413dd02d"


def test_the_environment_names_the_software_and_machine_of_this_process():
    import importlib.metadata
    import platform

    import numpy
    import torch

    initialised = torch.cuda.is_initialized()
    env = environment()
    assert torch.cuda.is_initialized() == initialised  # asking does not initialise CUDA
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["numpy"] == numpy.__version__ and env["ray"] == importlib.metadata.version("ray")
    assert env["cpu"] and env["cpu"] != "unknown" and env["cpus"] >= 1
    if not torch.cuda.is_available():
        assert env["gpu"] is None and ", no GPU; " in environment_words(env)
    words = environment_words(env)
    assert words.startswith(f"{env['cpu']}, {env['cpus']} CPUs, ") and f"torch {torch.__version__}" in words
    tags = env_tags({**env, "gpu": None})
    assert tags["env.torch"] == torch.__version__ and "env.gpu" not in tags  # no tag for what is not there


def test_other_software_names_the_recorded_versions_that_differ_from_here():
    here = {"python": "3.11.7", "torch": "2.13.0", "numpy": "2.4.6", "ray": "2.60.0", "cpu": "A"}
    assert other_software({**here, "ray": "2.50.0", "cpu": "B"}, here) == {}  # Ray and the machine are not compared
    assert other_software({**here, "torch": "2.12.0", "numpy": "1.26.4"}, here) == {
        "torch": "2.12.0",
        "numpy": "1.26.4",
    }
    assert other_software(None, here) == {} and other_software({"torch": None}, here) == {}  # nothing recorded
    assert other_software({**here, "torch": "2.13.0+cu126"}, {**here, "torch": "2.13.0+cpu"}) == {}  # one release
    assert other_software({"torch": "2.12.0"}) == {"torch": "2.12.0"}  # default: this process's versions
    import torch

    assert other_software({"torch": torch.__version__}) == {}


def test_software_besides_names_every_other_version_that_trained_a_run():
    import torch

    here = software_versions()
    assert here == {k: environment()[k] for k in ("python", "torch", "numpy")} and here["torch"] == torch.__version__
    assert software_besides({}) == {} and software_besides({"software": [here], "env": here}) == {}
    # Resumed under this torch from checkpoints two older ones wrote: both named, once each, in order.
    older = [{**here, "torch": "2.1.0"}, {**here, "torch": "2.0.1"}, {**here, "torch": "2.1.0+cu121"}, here]
    assert software_besides({"software": older}) == {"torch": "2.0.1 / 2.1.0 / 2.1.0+cu121"}
    # `software` is what trained the weights; `env` only the process that wrote the record.
    assert software_besides({"software": [here], "env": {**here, "torch": "2.0.1"}}) == {}
    # A record from before result.json listed `software`: its `env` says.
    assert software_besides({"env": {**here, "numpy": "1.26.4"}}) == {"numpy": "1.26.4"}
