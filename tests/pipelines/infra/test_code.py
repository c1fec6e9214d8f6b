"""Code fingerprints: documentation edits leave them alone, any change to what the code does changes them."""

from __future__ import annotations

from pipelines.infra.code import TRAINING_CODE, source_fingerprint, training_code_fingerprint


def _tree(root, body: str) -> None:
    for d in TRAINING_CODE:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "ditcore" / "m.py").write_text(body)
    (root / "jobs" / "train" / "loop.py").write_text("def step(x):\n    return x - 1\n")


def test_a_fingerprint_follows_the_code_not_its_documentation(tmp_path):
    code = 'def f(x):\n    """Double."""\n    return 2 * x\n'
    (tmp_path / "a.py").write_text(code)
    first = source_fingerprint(["a.py"], tmp_path)
    assert len(first) == 16 and int(first, 16) >= 0
    (tmp_path / "a.py").write_text('"""A module."""\n\n\ndef f(x):  # twice\n    """Twice x."""\n    return 2*x\n')
    assert source_fingerprint(["a.py"], tmp_path) == first  # docstrings, comments and formatting
    (tmp_path / "a.py").write_text(code.replace("2 * x", "3 * x"))
    assert source_fingerprint(["a.py"], tmp_path) != first


def test_the_training_code_fingerprint_covers_every_training_module(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _tree(a, "K = 1\n")
    _tree(b, "K = 1\n")
    _tree(c, "K = 2\n")
    (b / "jobs" / "evaluation" / "new.py").write_text("X = 0\n")  # a new module under jobs/evaluation
    (a / "jobs" / "sweep").mkdir()
    (a / "jobs" / "sweep" / "driver.py").write_text("Y = 0\n")
    fp = {r: training_code_fingerprint(r) for r in (a, b, c)}
    assert len(set(fp.values())) == 3
    (a / "jobs" / "sweep" / "driver.py").write_text("Y = 1\n")
    training_code_fingerprint.cache_clear()
    assert training_code_fingerprint(a) == fp[a]  # the sweep's own code is not training code
