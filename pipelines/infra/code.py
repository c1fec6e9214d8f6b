"""Fingerprints of source code: what a record says about the code that made it.

A fingerprint hashes the files' syntax trees with docstrings dropped (comments and formatting never reach the
tree), so an edit of the documentation leaves it alone while any change to what the code does changes it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

from pipelines.infra.config_files import REPO_ROOT

# The code that decides what a training run learns and how its budget points are scored: the models, objectives,
# samplers and metrics (ditcore), the training loop and plan (jobs/train), the evaluation of points (jobs/evaluation).
TRAINING_CODE = ("ditcore", "jobs/train", "jobs/evaluation")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def source_fingerprint(files: Iterable[str], root: Path = REPO_ROOT) -> str:
    """16 hex digits over the syntax trees (no docstrings, comments or formatting) of `files`, paths relative to
    `root`, in the order given."""
    h = hashlib.sha256()
    for rel in files:
        tree = _strip_docstrings(ast.parse((root / rel).read_text(), filename=rel))
        h.update(rel.encode() + b"\0" + ast.dump(tree, annotate_fields=False).encode() + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def training_code_fingerprint(root: Path = REPO_ROOT) -> str:
    """The fingerprint of TRAINING_CODE's Python files under `root`: recorded in every training run's result.json
    (`code`), so a run reused by a later invocation can be told apart from one this code would train. Computed once
    per process (the code a process runs is the code it imported)."""
    files = sorted(str(p.relative_to(root)) for d in TRAINING_CODE for p in (root / d).rglob("*.py"))
    return source_fingerprint(files, root)
