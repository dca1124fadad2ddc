"""The project's own tooling: the docs build strictly, the README stays a front page, lint is clean."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"
    text = "\n".join(lines)
    assert "bash scripts/setup.sh && .venv/bin/rbgp demo" in text  # the two commands
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in text


def test_docs_home_is_the_readme():
    from docs_index import index_text

    current = (ROOT / "docs" / "index.md").read_text()
    assert current == index_text((ROOT / "README.md").read_text()), "run: python scripts/docs_index.py"


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed; scripts/setup.sh installs it (pip install -e '.[test,dev]')")


def test_docs_build_strict(tmp_path):
    _tool("mkdocs")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("command", [["check", "src", "--no-cache"], ["format", "--check", "src", "--no-cache"]])
def test_ruff_is_clean(command):
    _tool("ruff")
    run = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


MAX_FUNCTION_LINES = 80


def test_no_function_longer_than_80_lines():
    """Functions in src/ (docstrings included) stay short enough to read at once."""
    import ast

    long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}::{node.name} ({lines} lines)")
    assert not long, long


LAYERS = {"graphs": 0, "patterns": 1, "ops": 2, "nn": 3, "compress": 4, "train": 4, "tools": 5, "experiments": 6,
          "cli": 7}
"""The packages of src/rbgp in the order data flows (DESIGN.md); the core is everything below experiments."""
UTILITIES = {"files", "resources", "precision", "allocator"}
"""Modules any layer may use; they import no layer."""


def _rbgp_imports(path: Path) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [n for n in found if n.startswith("rbgp.")]


def test_layers_import_only_downwards():
    """No package imports one above it (or beside it): in particular no module of the core imports the
    experiments."""
    src = ROOT / "src" / "rbgp"
    wrong = []
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        me = parts[0]
        if me == "__init__":
            continue
        for name in _rbgp_imports(path):
            other = name.split(".")[1]
            if other == me or other in UTILITIES and me not in UTILITIES:
                continue
            if me in UTILITIES or LAYERS.get(other, 99) >= LAYERS[me]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong
    assert LAYERS.keys() | UTILITIES | {"__init__"} >= {p.stem if p.is_file() else p.name for p in src.iterdir()
                                                         if p.suffix == ".py" or (p / "__init__.py").exists()}


def test_mypy_is_clean():
    _tool("mypy")
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "src"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]


TIMING = r"\b\d+(?:\.\d+)?\s?(?:ms|us)\b|\b\d+\.\d+x\b|\b2-core\b"
"""What a measurement looks like in prose: milliseconds, microseconds, a speed-up ratio, the machine."""


def test_docstrings_state_rules_not_timings():
    """Docstrings say what and why and link the benchmark file; measurements live in benchmarks/ (they go
    stale in a docstring)."""
    import ast
    import re

    found = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                for hit in re.findall(TIMING, node.value.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {hit!r}")
    assert not found, found
