"""The tree passes the linter and is formatted (ruff, configured in pyproject.toml), as CI checks.

Fix with `ruff check --fix . && ruff format .` from the repository root.
"""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("command", [["check", "--output-format=concise", "."], ["format", "--check", "."]])
def test_ruff(command):
  out = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, f"ruff {' '.join(command)}:\n{out.stdout[-4000:]}{out.stderr[-2000:]}"
