"""Path helpers and config look-ups shared by every rule file."""

import copy
import sys
from pathlib import Path

from snakemake.utils import validate

# the library is installed (pip install -e .); this also finds it in a plain checkout
sys.path.insert(0, workflow.basedir)

from workflow_scripts.languages import check_language
from workflow_scripts.modeling import check_model_path, looks_local

LANGS = [check_language(lang) for lang in config["languages"]]
MODELS = config["models"]
CORPORA = config["corpora"]
KINDS = ("path", "gguf", "tiny")
LOGS = "results/logs"
BENCH = "results/benchmarks"
# resumable training state, outside any rule output (Snakemake deletes failed outputs)
CHECKPOINTS = "results/checkpoints"


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
        path = model_spec(model)["path"]
        return str(Path(path).expanduser()) if looks_local(path) else path
    return f"results/models/{model}"


def model_input(wildcards):
    """Input files of a model: its built directory, a local directory, or nothing (hub id)."""
    path = model_dir(wildcards.model)
    return path if model_kind(wildcards.model) != "path" or looks_local(path) else []


def model_resources(model, key):
    return model_spec(model)["resources"][key]


def cluster_resources(model):
    """Cluster requests of a model's jobs: `gpu`/`gpu_model` only if it asks for a GPU
    (tiny and default models never do), `slurm_partition` if set."""
    res = model_spec(model)["resources"]
    keys = ["slurm_partition"] + (["gpu", "gpu_model"] if res["gpu"] else [])
    return {key: res[key] for key in keys if key in res}


def cluster_resource(key):
    """Resource function: the job's model's value of `key` (None: not requested)."""
    return lambda wc: cluster_resources(wc.model).get(key)


def model_cluster_resources():
    """`resources:` entries of the cluster keys, for the rules that load a model; one per
    key some configured model uses (so a CPU-only config adds none), valued per job."""
    keys = sorted({key for model in MODELS for key in cluster_resources(model)})
    return {key: cluster_resource(key) for key in keys}


def corpus_of(model):
    return model_spec(model)["corpus"]


def corpus_file(corpus, lang):
    return f"results/corpus/{corpus}/{check_language(lang)}.parquet"


def actcount_conditions():
    return config["actcount"].get("conditions", LANGS + ["parallel"])


# --- used by data.smk ---
def corpus_source_input(wildcards):
    spec = CORPORA.get(wildcards.corpus)
    if spec is None:
        raise ValueError(
            f"unknown corpus {wildcards.corpus!r}: configured corpora are {', '.join(CORPORA)}"
        )
    check_language(wildcards.lang)
    if spec["source"] == "bundled":
        return spec["path"]
    if spec["source"] == "local":
        return spec["path"].format(lang=wildcards.lang)
    dataset = spec["dataset"]
    return dataset if Path(dataset).exists() else []


# --- used by models.smk ---
def tiny_corpus_files(model):
    """lang -> corpus file of the tiny model's own pretraining languages."""
    spec = model_spec(model)["tiny"]
    corpus = spec.get("corpus", corpus_of(model))
    return {lang: corpus_file(corpus, lang) for lang in spec["languages"]}


# --- used by neurons.smk ---
def actcount_corpora(wildcards):
    """lang -> corpus file the condition's prompts come from."""
    corpus = corpus_of(wildcards.model)
    if wildcards.condition == "parallel":
        langs = config["actcount"]["parallel_languages"]
    else:
        langs = [wildcards.condition]
    return {lang: corpus_file(corpus, lang) for lang in langs}


ACTCOUNT_KEYS = (
    "positions n_prompts max_prompt_chars prompt_prefix split max_new_tokens max_length batch_size "
    "temperature seed chat_template system_prompt prompt_template"
).split()
PARALLEL_KEYS = ["parallel_languages", "parallel_template", "parallel_item_template"]


def actcount_settings(wildcards):
    """Only the settings the condition depends on (so a plot setting re-runs no counting)."""
    keys = ACTCOUNT_KEYS + (PARALLEL_KEYS if wildcards.condition == "parallel" else [])
    return {key: config["actcount"][key] for key in keys}


# --- used by figures.smk ---
def activation_files(wildcards):
    return {
        cond: f"results/activations/{wildcards.model}/{cond}.parquet"
        for cond in actcount_conditions()
    }


def inhibition_files(wildcards):
    return {
        cond: f"results/activations/{wildcards.model}/{cond}.inhibition.parquet"
        for cond in actcount_conditions()
    }


METHODS = ("plnd", "lape", "actcount")
# settings each per-language statistics job depends on (the rest only affect selection)
STATS_KEYS = {
    "plnd": "variant parts reduction top_fraction epsilon n_docs max_length batch_size split".split(),
    "lape": "n_docs max_length batch_size split".split(),
}


def method_settings(model, method):
    """Global settings of `method` with the model's overrides (validated at start-up)."""
    return {**config[method], **model_spec(model).get(method, {})}


def stats_settings(wildcards, method):
    settings = method_settings(wildcards.model, method)
    return {key: settings[key] for key in STATS_KEYS[method] if key in settings}


def stats_files(wildcards):
    """lang -> the per-language statistics a selection is computed from."""
    if wildcards.method == "actcount":
        return {
            lang: f"results/activations/{wildcards.model}/{lang}.parquet"
            for lang in LANGS
        }
    return {
        lang: f"results/stats/{wildcards.model}/{wildcards.method}/{lang}.parquet"
        for lang in LANGS
    }


def selection_settings(wildcards):
    if wildcards.method == "actcount":
        return {"select_proportion": config["actcount"]["select_proportion"]}
    settings = method_settings(wildcards.model, wildcards.method)
    if wildcards.method == "lape":
        return {
            "top_share": settings["top_share"],
            "percentile": settings["percentile"],
        }
    return {
        "min_fraction": settings["min_fraction"],
        "agnostic_languages": settings.get("agnostic_languages", LANGS),
    }


def selection_files(model):
    """method -> lang -> selection table of one model."""
    return {
        method: {
            lang: f"results/neurons/{model}/{method}/{lang}.parquet" for lang in LANGS
        }
        for method in METHODS
    }


def eval_corpora(model):
    """lang -> corpus file, for every evaluation language."""
    return {lang: corpus_file(corpus_of(model), lang) for lang in LANGS}


def all_targets():
    figures = [
        "heatmap",
        "inhibition",
        "peaks",
        "layers",
        "overlap",
        "logit_lens",
        "ablation",
    ]
    return [f"results/figures/{fig}_{model}.png" for model in MODELS for fig in figures]


for _model, _spec in MODELS.items():
    if _spec["corpus"] not in CORPORA:
        raise ValueError(
            f"model {_model!r}: corpus {_spec['corpus']!r} is not a key under corpora: "
            f"({', '.join(CORPORA)})"
        )
    if "path" in _spec:
        check_model_path(_spec["path"])
    for _method in (
        "plnd",
        "lape",
        "logit_lens",
    ):  # per-model overrides obey the schema
        if _method in _spec:
            _merged = copy.deepcopy(config)
            _merged[_method] = {**config[_method], **_spec[_method]}
            validate(_merged, "../resources/schemas/config.schema.yaml")
for _lang in config["actcount"]["parallel_languages"] + [
    c for c in config["actcount"].get("conditions", []) if c != "parallel"
]:
    check_language(_lang)
