"""Path helpers and config look-ups shared by every rule file."""

import os
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
# rule scripts import workflow_scripts: make it importable in their processes too
os.environ["PYTHONPATH"] = os.pathsep.join(
    [workflow.basedir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

from workflow_scripts.languages import check_language
from workflow_scripts.modeling import check_model_path, looks_local

LANGS = [check_language(lang) for lang in config["languages"]]
MODELS = config["models"]
CORPORA = config["corpora"]
KINDS = ("path", "gguf", "tiny")
LOGS = "results/logs"
BENCH = "results/benchmarks"


wildcard_constraints:
    lang="[a-z]{2}",
    condition="[a-z]{2}|parallel",
    model="[^/]+",
    corpus="[^/]+",


def model_spec(model):
    """The config entry of model key `model`, or a clear error."""
    if model not in MODELS:
        raise ValueError(
            f"unknown model {model!r}: configured models are {', '.join(MODELS)}"
        )
    return MODELS[model]


def model_kind(model):
    spec = model_spec(model)
    return next(kind for kind in KINDS if kind in spec)


def models_of_kind(kind):
    """Regex matching the model keys of one kind (never matches if there are none)."""
    keys = [m for m in MODELS if model_kind(m) == kind]
    return "|".join(keys) if keys else "(?!)"


def model_dir(model):
    """Directory (or hub id) the model is loaded from."""
    if model_kind(model) == "path":
        return model_spec(model)["path"]
    return f"results/models/{model}"


def model_input(wildcards):
    """Input files of a model: its built directory, a local directory, or nothing (hub id)."""
    path = model_dir(wildcards.model)
    return path if model_kind(wildcards.model) != "path" or looks_local(path) else []


def model_resources(model, key):
    return model_spec(model)["resources"][key]


def corpus_of(model):
    return model_spec(model)["corpus"]


def corpus_file(corpus, lang):
    return f"results/corpus/{corpus}/{check_language(lang)}.parquet"


def actcount_conditions():
    return config["actcount"].get("conditions", LANGS + ["parallel"])


def all_targets():
    figures = ["heatmap", "inhibition", "peaks"]
    return [f"results/figures/{fig}_{model}.png" for model in MODELS for fig in figures]


for _model, _spec in MODELS.items():
    if _spec["corpus"] not in CORPORA:
        raise ValueError(
            f"model {_model!r}: corpus {_spec['corpus']!r} is not a key under corpora: "
            f"({', '.join(CORPORA)})"
        )
    if "path" in _spec:
        check_model_path(_spec["path"])
for _lang in config["actcount"]["parallel_languages"] + [
    c for c in config["actcount"].get("conditions", []) if c != "parallel"
]:
    check_language(_lang)
