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
