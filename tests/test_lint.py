"""The tree passes the linter configured in pyproject.toml ([tool.ruff]): unused and undefined
names, import order, bugbear checks. ``ruff check --fix .`` repairs most findings."""

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_check_passes():
    ruff = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    result = subprocess.run([*command, "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
