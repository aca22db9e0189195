"""The runnable test configs ``tests/configs/*.yaml``: each one is valid, its header's
command dry-runs as written from the repository root, and some test loads it.

The dry run happens in a scratch directory that looks like the repository root to the
workflow (links to ``config.yaml``, ``resources/`` ...), so the repo gets no ``.snakemake/``
and the config's relative paths resolve as they do for a user.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO, SCHEMA
from snakemake.utils import validate

from workflow_scripts.config import check_cross_fields

CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))
NAMES = [path.stem for path in CONFIG_FILES]


def header(path: Path) -> list[str]:
    """The comment lines at the top of a config, without the '#'."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def documented_command(path: Path) -> list[str]:
    """The header's ``snakemake ...`` command (continuation lines joined), as arguments."""
    lines = header(path)
    start = next(i for i, line in enumerate(lines) if line.startswith("snakemake "))
    command = lines[start]
    for line in lines[start + 1 :]:
        if not command.endswith("\\"):
            break
        command = command[:-1] + " " + line
    return shlex.split(command)


def test_there_are_test_configs():
    assert {"tiny", "crash"} <= set(NAMES), NAMES


@pytest.mark.parametrize("path", CONFIG_FILES, ids=NAMES)
def test_config_is_valid(path):
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    validate(cfg, str(SCHEMA))
    check_cross_fields(cfg)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=NAMES)
def test_header_says_what_how_long_and_how_to_run(path):
    text = "\n".join(header(path))
    assert text.startswith(f"{path.name}: "), "the header starts with the file name and its use"
    assert re.search(r"^Takes: .*\d", text, re.M), "the header says how long a run takes"
    args = documented_command(path)
    rel = path.relative_to(REPO).as_posix()
    assert args[:5] == ["snakemake", "--cores", "2", "--configfile", rel], args
    # without it Snakemake merges the repo's config.yaml (its models too) under this one
    assert "--replace-workflow-config" in args, args


def relative_paths(cfg: dict) -> list[str]:
    return [
        spec["path"]
        for section in ("corpora", "datasets")
        for spec in cfg.get(section, {}).values()
        if "path" in spec and not Path(spec["path"]).is_absolute()
    ]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=NAMES)
def test_documented_command_dry_runs_from_the_repo_root(path, tmp_path):
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    for rel in relative_paths(cfg):
        assert not rel.startswith(".."), f"{rel}: keep paths inside the repository"
    # a scratch directory that looks like the repo root: config.yaml, resources/, tests/ ...
    workdir = tmp_path / "work"
    workdir.mkdir()
    for entry in REPO.iterdir():
        if not entry.name.startswith(".") and entry.name != "results":
            (workdir / entry.name).symlink_to(entry)
    args = documented_command(path)[1:]
    cmd = [sys.executable, "-m", "snakemake", *args, "-n", "-s", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Job stats:" in out, out[-3000:]
    # the config's models and nothing of config.yaml's
    planned = set(re.findall(r"wildcards: .*?\bmodel=([^,\s]+)", out))
    assert planned and planned <= set(cfg["models"]), planned
    pretrained = set(re.findall(r"output: results/models/([^,\s]+)", out))
    assert pretrained == {m for m, spec in cfg["models"].items() if "tiny" in spec}
    assert not (workdir / "results").exists(), "a dry run writes no results"


def test_documented_targets_are_the_tests_targets():
    from test_cluster import TARGETS as CLUSTER
    from test_crash import TARGET as CRASH
    from test_workflow_e2e import TARGETS as E2E

    tests = {"tiny": E2E, "tiny_en_fr": CLUSTER, "crash": [CRASH]}
    for name, targets in tests.items():
        args = documented_command(CONFIGS / f"{name}.yaml")
        assert [a for a in args if a.startswith("results/")] == targets, name


def test_every_config_is_used_by_a_test():
    tests = [p for p in sorted(REPO.glob("tests/test_*.py")) if p.name != Path(__file__).name]
    sources = "\n".join(p.read_text(encoding="utf-8") for p in tests)
    used = set(re.findall(r"load_config\(\s*[\"'](\w+)[\"']", sources))
    assert set(NAMES) <= used, f"configs no test loads: {sorted(set(NAMES) - used)}"
    assert used <= set(NAMES), f"tests load configs that do not exist: {sorted(used - set(NAMES))}"
