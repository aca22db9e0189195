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


def test_readme_has_the_two_setup_commands_ci_runs():
    """.ci/run reads the README's set-up commands; there must be exactly these two."""
    proc = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "readme_commands.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    install_and_run, install_and_test = proc.stdout.splitlines()
    assert install_and_run.startswith("pip install -e . && snakemake ")
    assert install_and_test == "pip install -e '.[test]' && pytest"
