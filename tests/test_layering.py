"""Layering (docs/architecture.md, "Layers"): imports only point down. Walks every import statement with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "ditcore": {
        "ray",
        "mlflow",
        "boto3",
        "botocore",
        "yaml",
        "argparse",
        "pyarrow",
        "diffusers",
        "transformers",
        "pipelines",
        "jobs",
        "serve",
    },
    "pipelines": {"jobs", "serve"},
    "serve": {"jobs"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a file, including imports inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, mod in _imports(path):
            if mod in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package):
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ does not exist yet")
    assert _violations(package) == []


def test_checker_catches_a_violation(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import os\ndef f():\n    import ray.data\n    from mlflow import log\n"
        "    importlib.import_module('yaml')\nfrom . import sibling\n"
    )
    assert [m for _, m in _imports(f)] == ["os", "ray", "mlflow", "yaml"]


def _drawn_layers() -> dict[str, set[str]]:
    """{package: project packages it may import} from the arrows of docs/architecture.md's layer drawing."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    allowed: dict[str, set[str]] = {}
    for line in block.splitlines():
        m = re.match(r"^(\w+)/\s.*?(?:->\s*([\w, ]+))?\s*$", line)
        if m:
            allowed[m.group(1)] = {p.strip() for p in (m.group(2) or "").split(",") if p.strip()}
    return allowed


def test_the_drawn_layers_are_the_enforced_ones():
    drawn = _drawn_layers()
    packages = {"ditcore", "pipelines", "serve", "jobs"}
    assert set(drawn) == packages
    for pkg in packages:
        enforced = packages - {pkg} - FORBIDDEN.get(pkg, set())
        assert drawn[pkg] == enforced, f"{pkg}: drawn {sorted(drawn[pkg])}, enforced {sorted(enforced)}"
