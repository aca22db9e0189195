"""The conda environment pins the same versions as pyproject.toml (one source of truth).

Conda channels cannot be reached here, so the environment is checked for
consistency, not solved.
"""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import REPO


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        name, spec = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", req.strip()).groups()
        out[re.sub(r"\[.*\]", "", name).lower()] = spec.replace(" ", "")
    return out


def test_conda_env_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs" / "workflow.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    wanted, got = _pins(project), _pins(pip)
    wanted.pop("snakemake")  # runs the jobs, not inside them
    assert got == wanted


def test_every_rule_uses_the_environment():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        assert text.count("\nrule ") == text.count("conda:\n        ENV\n"), smk
    common = (REPO / "rules" / "common.smk").read_text()
    assert 'ENV = "../envs/workflow.yaml"' in common
