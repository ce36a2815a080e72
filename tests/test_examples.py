"""Every script in examples/ runs as a user would run it: `python examples/X.py` from another folder,
offline, in its own process. The scripts check their own results (asserts), so a run that exits 0
did what its docstring says."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def test_the_documented_examples_are_there() -> None:
    """A missing or renamed script would otherwise just mean fewer runs below."""
    assert {"own_training_loop.py", "custom_method.py", "embed_and_search.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_runs_from_any_folder(script: Path, tmp_path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(script.read_text()))
    assert docstring and "show" in docstring, f"{script.name}: a module docstring saying what it shows"
    # one thread: the test machines share their cores, where torch's spinning threads slow a run ~3x;
    # the index cache goes where conftest put it (the test's folder), not the user's cache
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "OwnLoopWarning" not in result.stderr, result.stderr[-3000:]  # each trains the way the guards ask
    assert sorted(p.name for p in cwd.iterdir()) == [], "an example left files in its working folder"
