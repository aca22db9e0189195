"""Path helpers and config look-ups shared by every rule file."""

import copy
import sys
from pathlib import Path

from snakemake.utils import validate

# the library is installed (pip install -e .); this also finds it in a plain checkout
sys.path.insert(0, workflow.basedir)

from workflow_scripts.languages import check_language
from workflow_scripts.models.loading import check_model_path, looks_local

LANGS = [check_language(lang) for lang in config["languages"]]
MODELS = config["models"]
CORPORA = config["corpora"]
DATASETS = config["datasets"]
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


# --- used by translation.smk ---
def dataset_spec(wildcards):
    """The config entry of dataset `wildcards.dataset`, if `wildcards.lang` is one of its languages."""
    if wildcards.dataset not in DATASETS:
        raise ValueError(
            f"unknown dataset {wildcards.dataset!r}: configured datasets are "
            f"{', '.join(DATASETS) or '(none: add one under datasets:)'}"
        )
    spec = DATASETS[wildcards.dataset]
    langs = [spec["source_lang"], *spec["languages"]]
    if check_language(wildcards.lang) not in langs:
        raise ValueError(
            f"dataset {wildcards.dataset!r} has no language {wildcards.lang!r} "
            f"(source {spec['source_lang']}, targets {', '.join(spec['languages'])})"
        )
    return spec


def dataset_source_input(wildcards):
    """The dataset's source file (bundled or local), or nothing (a hub dataset)."""
    spec = dataset_spec(wildcards)
    if spec["source"] == "bundled":
        return spec.get("path", f"{workflow.basedir}/resources/corpus/bundled.parquet")
    if spec["source"] == "local":
        return spec["path"].format(lang=spec["source_lang"])
    return spec["dataset"] if Path(spec["dataset"]).exists() else []


def translation_cache(wildcards):
    """Outside the outputs, so a failed or killed job keeps what it paid for."""
    return f"results/translated/.cache/{wildcards.dataset}/{wildcards.lang}.jsonl"


def translated_dataset():
    """The dataset the parallel condition reads (`translated:<dataset>`), or None."""
    source = config["actcount"]["parallel_source"]
    return source.split(":", 1)[1] if source.startswith("translated:") else None


# --- used by neurons.smk ---
def actcount_corpora(wildcards):
    """lang -> corpus (or translated) file the condition's prompts come from."""
    corpus = corpus_of(wildcards.model)
    if wildcards.condition != "parallel":
        return {wildcards.condition: corpus_file(corpus, wildcards.condition)}
    langs = config["actcount"]["parallel_languages"]
    dataset = translated_dataset()
    if dataset is not None:
        return {lang: f"results/translated/{dataset}/{lang}.parquet" for lang in langs}
    return {lang: corpus_file(corpus, lang) for lang in langs}


ACTCOUNT_KEYS = (
    "positions n_prompts max_prompt_chars prompt_prefix split max_new_tokens max_length batch_size "
    "temperature seed chat_template system_prompt prompt_template"
).split()
PARALLEL_KEYS = ["parallel_languages", "parallel_template", "parallel_item_template"]
PIM_KEYS = ["parallel_builder", "pim_k", "pim_template"]


def actcount_settings(wildcards):
    """Only the settings the condition depends on (so a plot setting re-runs no counting)."""
    keys = ACTCOUNT_KEYS + (PARALLEL_KEYS if wildcards.condition == "parallel" else [])
    settings = {key: config["actcount"][key] for key in keys}
    # only non-default choices enter params, so earlier parallel runs are not re-run
    if wildcards.condition == "parallel":
        act = config["actcount"]
        if translated_dataset() is not None:
            settings["parallel_source"] = act["parallel_source"]
            settings["parallel_skip_flagged"] = act["parallel_skip_flagged"]
        if act["parallel_builder"] != "concat":
            settings.update({k: act[k] for k in PIM_KEYS if k in act})
    return settings


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


REGION_LANGS = [check_language(lang) for lang in config["regions"]["languages"]]
REGIONS = ["top", "bottom", "random", "core"] + [
    f"monolingual_{lang}" for lang in REGION_LANGS
]
# perturbed in the ablation (core is top or bottom, by the score)
PERTURBED = ["top", "bottom", "random"] + [
    f"monolingual_{lang}" for lang in REGION_LANGS
]
# settings that change a language's region scores
SCORE_KEYS = "score n_docs max_length steps batch_size lr weight_decay trainable seed engine zero_stage".split()


def region_settings(model):
    return method_settings(model, "regions")


def score_settings(model):
    settings = region_settings(model)
    return {key: settings[key] for key in SCORE_KEYS}


def region_score_files(model):
    """region language -> its score file under the model's configured score."""
    score = region_settings(model)["score"]
    return {
        lang: f"results/regions/{model}/{score}/{lang}.safetensors"
        for lang in REGION_LANGS
    }


def perturb_settings(model):
    settings = region_settings(model)
    keys = ("score", "k", "perturb", "perturb_scale", "perturb_kinds")
    return {key: settings[key] for key in keys}


def ablation_parts(wildcards):
    """Per-target ablation tables of one model and method (regions: per perturbed region)."""
    parts = PERTURBED if wildcards.method == "region" else LANGS
    return [
        f"results/ablation/{wildcards.model}/{wildcards.method}/{part}.parquet"
        for part in parts
    ]


def findings_inputs(wildcards):
    """Named inputs of the findings table of one model."""
    model = wildcards.model
    inputs = {f"ablation_{m}": f"results/ablation/{model}/{m}.parquet" for m in METHODS}
    inputs["region"] = f"results/ablation/{model}/region.parquet"
    for cond in actcount_conditions():
        inputs[f"inhibition_{cond}"] = (
            f"results/activations/{model}/{cond}.inhibition.parquet"
        )
    for method in ("plnd", "lape"):
        for lang in LANGS:
            inputs[f"sel_{method}_{lang}"] = (
                f"results/neurons/{model}/{method}/{lang}.parquet"
            )
    return inputs


def all_targets():
    figures = [
        "heatmap",
        "inhibition",
        "peaks",
        "layers",
        "overlap",
        "logit_lens",
        "ablation",
        "regions",
    ]
    return [
        f"results/figures/{fig}_{model}.png" for model in MODELS for fig in figures
    ] + [f"results/tables/findings_{model}.csv" for model in MODELS]


for _model, _spec in MODELS.items():
    if _spec["corpus"] not in CORPORA:
        raise ValueError(
            f"model {_model!r}: corpus {_spec['corpus']!r} is not a key under corpora: "
            f"({', '.join(CORPORA)})"
        )
    if "path" in _spec:
        check_model_path(_spec["path"])
    if "languages" in _spec.get("regions", {}):
        raise ValueError(
            f"model {_model!r}: regions.languages is global (set it under regions:)"
        )
    for _method in (
        "plnd",
        "lape",
        "logit_lens",
        "ablation",
        "regions",
    ):  # per-model overrides obey the schema
        if _method in _spec:
            _merged = copy.deepcopy(config)
            _merged[_method] = {**config[_method], **_spec[_method]}
            validate(_merged, "../resources/schemas/config.schema.yaml")
for _lang in config["actcount"]["parallel_languages"] + [
    c for c in config["actcount"].get("conditions", []) if c != "parallel"
]:
    check_language(_lang)
for _name, _spec in DATASETS.items():
    for _lang in [_spec["source_lang"], *_spec["languages"]]:
        check_language(_lang)
if translated_dataset() is not None:
    _name = translated_dataset()
    if _name not in DATASETS:
        raise ValueError(
            f"actcount.parallel_source: {config['actcount']['parallel_source']!r} names no "
            f"dataset under datasets: ({', '.join(DATASETS) or 'none'})"
        )
    _have = {DATASETS[_name]["source_lang"], *DATASETS[_name]["languages"]}
    _missing = [c for c in config["actcount"]["parallel_languages"] if c not in _have]
    if _missing:
        raise ValueError(
            f"actcount.parallel_languages {_missing} are not languages of dataset {_name!r} "
            f"({', '.join(sorted(_have))}): add them to datasets.{_name}.languages"
        )
