"""Every module and step script imports in the installed environment, and every third-party
package the code imports is declared in pyproject.toml.

A dependency that only the developer's Python has is a broken product: in a brand-new
virtual environment (what `.ci/run` creates) these tests fail on an import that the
install did not bring; in any environment the declaration check fails on an import that
pyproject.toml does not name. The run-time extras that transformers needs on the paths
this project uses (GGUF reading, device_map dispatch) are checked through transformers'
own availability functions, since they are not imported by the project's code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import pkgutil
import re
import sys
import tomllib

import pytest
from conftest import REPO

import workflow_scripts

STEPS = sorted((REPO / "workflow_scripts" / "steps").glob("*.py"))
LIBRARY = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(workflow_scripts.__path__, "workflow_scripts.")
    if not name.startswith("workflow_scripts.steps.") or name == "workflow_scripts.steps._step"
)
# imported only inside the function that needs them, and only on hardware this project's
# machines lack (a GPU node with DeepSpeed), so not declared (README: Clusters)
OPTIONAL = {"deepspeed"}


@pytest.mark.parametrize("module", LIBRARY)
def test_library_module_imports(module):
    importlib.import_module(module)


def _imports(path) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


@pytest.mark.parametrize("script", STEPS, ids=lambda p: p.stem)
def test_step_script_imports_resolve(script):
    """Step scripts run inside Snakemake (they read the `snakemake` global), so each of
    their imports is resolved here: the module imports and has every name taken from it."""
    for node in _imports(script):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name) or importlib.util.find_spec(
                f"{node.module}.{alias.name}"
            ), f"{script.name}: {node.module} has no {alias.name}"


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {re.split(r"[\s=<>!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_third_party_import_is_declared():
    stdlib = set(sys.stdlib_module_names)
    local = {"workflow_scripts", "conftest", "openai_server", "common"} | {
        p.stem for p in (REPO / "tests").glob("*.py")
    }
    providers = md.packages_distributions()
    declared = _declared()
    files = [*(REPO / "workflow_scripts").rglob("*.py"), *(REPO / "tests").glob("*.py")]
    files += [*(REPO / "bench").glob("*.py"), *(REPO / "resources").rglob("*.py")]
    missing = {}
    for path in files:
        for node in _imports(path):
            if isinstance(node, ast.ImportFrom) and (node.level or node.module is None):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in local or top in OPTIONAL or top == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                if not dists & declared:
                    missing.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_transformers_extras_of_the_real_model_path():
    """GGUF conversion (the default `gemma` model) and device_map dispatch need these."""
    from transformers.utils import import_utils

    assert import_utils.is_accelerate_available(), "accelerate: GGUF loading and device_map"
    assert import_utils.is_gguf_available(), "gguf: reading GGUF files"
    assert import_utils.is_tokenizers_available()
    import safetensors  # noqa: F401  (every model directory is safetensors)

    assert import_utils.is_jinja_available(), "jinja2: chat templates"
