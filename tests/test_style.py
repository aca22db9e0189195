"""The project's own checks, so CI enforces them: ruff, snakefmt, snakemake --lint."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

CHECKS = {
    "ruff check": [sys.executable, "-m", "ruff", "check", "."],
    "ruff format": [sys.executable, "-m", "ruff", "format", "--check", "."],
    "snakefmt": ["snakefmt", "--check", "."],
    "snakemake --lint": [sys.executable, "-m", "snakemake", "--lint", "-n"],
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_check_is_clean(name):
    proc = subprocess.run(CHECKS[name], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
