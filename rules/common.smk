"""Config look-ups, path helpers and the shared blocks of the rule files.

Paths come from workflow_scripts/paths.py (the path contract), config checks from
workflow_scripts/config.py (run by the Snakefile), the settings each job depends on
from the stage packages. Nothing here computes.
"""

from pathlib import Path

from workflow_scripts import config as cfg
from workflow_scripts import paths
from workflow_scripts.languages import check_language
from workflow_scripts.models.loading import looks_local
from workflow_scripts.neurons import (
    ACTCOUNT_SETTINGS,
    PARALLEL_SETTINGS,
    PARALLEL_TRANSLATED_SETTINGS,
    PIM_SETTINGS,
    STATS_SETTINGS,
)
from workflow_scripts.regions import PERTURB_SETTINGS, SCORE_SETTINGS

LANGS = config["languages"]
MODELS = config["models"]
CORPORA = config["corpora"]
DATASETS = config["datasets"]
METHODS = ("plnd", "lape", "actcount")
# mixture-of-experts models only, asked for by name (results/figures/experts_{model}.png,
# results/ablation/{model}/experts.parquet): the language-specific experts
ALL_METHODS = METHODS + ("experts",)
FIGURES = ("heatmap", "inhibition", "peaks", "layers", "overlap", "logit_lens")
FIGURES += ("ablation", "regions")
REGION_LANGS = config["regions"]["languages"]
REGIONS = ["top", "bottom", "random", "core"] + [
    f"monolingual_{lang}" for lang in REGION_LANGS
]
# perturbed in the ablation (core is top or bottom, by the score)
PERTURBED = ["top", "bottom", "random"] + [
    f"monolingual_{lang}" for lang in REGION_LANGS
]
ENV = "../envs/workflow.yaml"
STEERING_METHODS = METHODS + ("diffmean",)
# an ablation under another intervention than zero has its own files (ABLATION_BY)
OTHER_INTERVENTIONS = [i for i in config["ablation"]["interventions"] if i != "zero"]


def logs(rule, *parts):
    return paths.log(rule, *parts)


def benchmarks(rule, *parts):
    return paths.benchmark(rule, *parts)


def checkpoints_dir(rule, *parts):
    """Resumable training state of a job, outside its outputs (Snakemake deletes those)."""
    return paths.job_path(paths.CHECKPOINTS, rule, *parts)


# ------------------------------------------------------------------------ models


def model_spec(model):
    """The config entry of model key `model`, or a clear error."""
    if model not in MODELS:
        raise ValueError(
            f"unknown model {model!r}: configured models are {', '.join(MODELS)}"
        )
    return MODELS[model]


def models_of_kind(kind):
    """Regex matching the model keys of one kind (never matches if there are none)."""
    keys = [m for m in MODELS if cfg.model_kind(MODELS[m]) == kind]
    return "|".join(keys) if keys else "(?!)"


def model_dir(model):
    """Directory (or hub id) the model is loaded from."""
    if cfg.model_kind(model_spec(model)) == "path":
        path = model_spec(model)["path"]
        return str(Path(path).expanduser()) if looks_local(path) else path
    return paths.fill(paths.MODEL_DIR, model=model)


def model_input(wildcards):
    """Input files of a model: its built directory, a local directory, or nothing (hub id)."""
    path = model_dir(wildcards.model)
    is_hub_id = cfg.model_kind(
        model_spec(wildcards.model)
    ) == "path" and not looks_local(path)
    return [] if is_hub_id else path


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


def model_threads(wildcards):
    return model_resources(wildcards.model, "threads")


def model_job_resources(mem_factor=1):
    """`resources:` of a job that loads the model: its memory (times `mem_factor`),
    runtime, and one entry per cluster key some configured model uses (so a CPU-only
    config requests none), valued per job."""
    keys = sorted({key for model in MODELS for key in cluster_resources(model)})
    return {
        **{key: cluster_resource(key) for key in keys},
        "mem_mb": lambda wc: mem_factor * model_resources(wc.model, "mem_mb"),
        "runtime": lambda wc: model_resources(wc.model, "runtime"),
    }


def model_params():
    """`params:` every model job passes to its script: where the model is, its dtype."""
    return {
        "model_path": lambda wc: model_dir(wc.model),
        "dtype": lambda wc: model_spec(wc.model)["dtype"],
    }


def method_settings(model, method):
    """Global settings of `method` with the model's overrides (validated at start-up)."""
    return cfg.method_settings(config, model, method)


# ----------------------------------------------------------------------- corpora


def corpus_of(model):
    return model_spec(model)["corpus"]


def corpus_file(corpus, lang):
    return paths.fill(paths.CORPUS, corpus=corpus, lang=check_language(lang))


def model_corpus(wildcards):
    """The job's language of its model's corpus."""
    return corpus_file(corpus_of(wildcards.model), wildcards.lang)


def eval_corpora(model):
    """lang -> corpus file, for every evaluation language."""
    return {lang: corpus_file(corpus_of(model), lang) for lang in LANGS}


def base_ppl_settings(model):
    """What the unablated perplexity depends on (not n_random, mode, interventions)."""
    s = method_settings(model, "ablation")
    return {
        k: s[k] for k in ("n_docs", "max_length", "max_tokens", "batch_size", "split")
    }


def ablation_base_files(model):
    """The unablated perplexity of every evaluation language (one job each)."""
    return [paths.fill(paths.ABLATION_BASE, model=model, lang=lang) for lang in LANGS]


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


def tiny_corpus_files(model):
    """lang -> corpus file of the tiny model's own pretraining languages."""
    spec = model_spec(model)["tiny"]
    corpus = spec.get("corpus", corpus_of(model))
    return {lang: corpus_file(corpus, lang) for lang in spec["languages"]}


# ------------------------------------------------------------------- translation


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
        return spec.get("path", str(cfg.BUNDLED_CORPUS))
    if spec["source"] == "local":
        return spec["path"].format(lang=spec["source_lang"])
    return spec["dataset"] if Path(spec["dataset"]).exists() else []


# ---------------------------------------------------------- activation counting


def actcount_conditions():
    return config["actcount"].get("conditions", LANGS + ["parallel"])


def actcount_corpora(wildcards):
    """lang -> corpus (or translated) file the condition's prompts come from."""
    corpus = corpus_of(wildcards.model)
    if wildcards.condition != "parallel":
        return {wildcards.condition: corpus_file(corpus, wildcards.condition)}
    langs = config["actcount"]["parallel_languages"]
    dataset = cfg.translated_dataset(config)
    if dataset is not None:
        return {
            lang: paths.fill(paths.TRANSLATED, dataset=dataset, lang=lang)
            for lang in langs
        }
    return {lang: corpus_file(corpus, lang) for lang in langs}


def actcount_settings(wildcards):
    """Only the settings the condition depends on (so a plot setting re-runs no counting)."""
    parallel = wildcards.condition == "parallel"
    act = config["actcount"]
    settings = {key: act[key] for key in ACTCOUNT_SETTINGS}
    if parallel:
        settings.update({key: act[key] for key in PARALLEL_SETTINGS})
        # only non-default choices enter params, so earlier parallel runs are not re-run
        if cfg.translated_dataset(config) is not None:
            settings.update({key: act[key] for key in PARALLEL_TRANSLATED_SETTINGS})
        if act["parallel_builder"] != "concat":
            settings.update({k: act[k] for k in PIM_SETTINGS if k in act})
    return settings


def activation_files(wildcards):
    return [
        paths.fill(paths.ACTIVATIONS, model=wildcards.model, condition=cond)
        for cond in actcount_conditions()
    ]


def inhibition_files(wildcards):
    return [
        paths.fill(paths.INHIBITION, model=wildcards.model, condition=cond)
        for cond in actcount_conditions()
    ]


# ------------------------------------------------------------ neuron selection


def stats_settings(wildcards, method):
    settings = method_settings(wildcards.model, method)
    return {key: settings[key] for key in STATS_SETTINGS[method] if key in settings}


def stats_files(wildcards, method=None):
    """The per-language statistics a selection is computed from, in LANGS order."""
    method = method or wildcards.method
    if method == "actcount":
        template = paths.fill(paths.ACTIVATIONS, model=wildcards.model)
        return [template.format(condition=lang) for lang in LANGS]
    template = paths.fill(paths.STATS, model=wildcards.model, method=method)
    return [template.format(lang=lang) for lang in LANGS]


def selection_settings(wildcards):
    if wildcards.method == "actcount":
        return {"select_proportion": config["actcount"]["select_proportion"]}
    settings = method_settings(wildcards.model, wildcards.method)
    if wildcards.method in ("lape", "experts"):
        return {
            "top_share": settings["top_share"],
            "percentile": settings["percentile"],
        }
    return {
        "min_fraction": settings["min_fraction"],
        "agnostic_languages": settings.get("agnostic_languages", LANGS),
    }


def selection_file(model, method, lang):
    return paths.fill(paths.NEURONS, model=model, method=method, lang=lang)


def selection_files(model):
    """Every selection table of one model, method by method, each in LANGS order."""
    return [selection_file(model, m, lang) for m in METHODS for lang in LANGS]


def logit_lens_files(model):
    return [paths.fill(paths.LOGIT_LENS, model=model, lang=lang) for lang in LANGS]


# ---------------------------------------------------------------------- regions


def region_settings(model):
    return method_settings(model, "regions")


def score_settings(model):
    settings = region_settings(model)
    return {key: settings[key] for key in SCORE_SETTINGS}


def region_score_files(model):
    """The score files of the region languages (REGION_LANGS order), configured score."""
    score = region_settings(model)["score"]
    return [
        paths.fill(paths.REGION_SCORES, model=model, score=score, lang=lang)
        for lang in REGION_LANGS
    ]


def perturb_settings(model):
    settings = region_settings(model)
    return {key: settings[key] for key in PERTURB_SETTINGS}


# --------------------------------------------------------------------- ablation


def ablation_parts(wildcards):
    """Per-target ablation tables of one model and method (regions: per perturbed region)."""
    if wildcards.method == "region":
        template = paths.fill(paths.REGION_ABLATION, model=wildcards.model)
        return [template.format(region=region) for region in PERTURBED]
    template = paths.fill(
        paths.NEURON_ABLATION, model=wildcards.model, method=wildcards.method
    )
    return [template.format(lang=lang) for lang in LANGS]


def ablation_file(model, method):
    return paths.fill(paths.ABLATION, model=model, method=method)


def unit_stats_file(model, lang, kind="units"):
    template = paths.UNIT_STATS if kind == "units" else paths.HIDDEN_MEANS
    return paths.fill(template, model=model, lang=lang)


def mean_reference_files(model):
    """The unit statistics `mean` averages over (ablation.mean_reference)."""
    ref = method_settings(model, "ablation")["mean_reference"]
    return [unit_stats_file(model, lang) for lang in (LANGS if ref == "all" else [ref])]


def ablation_by_file(model, method, intervention):
    return paths.fill(
        paths.ABLATION_BY, model=model, method=method, intervention=intervention
    )


def ablation_by_parts(wildcards):
    template = paths.fill(
        paths.NEURON_ABLATION_BY,
        model=wildcards.model,
        method=wildcards.method,
        intervention=wildcards.intervention,
    )
    return [template.format(lang=lang) for lang in LANGS]


def ablation_intervention(wildcards):
    """The ablation settings of the job's intervention (zero: none)."""
    settings = method_settings(wildcards.model, "ablation")
    kind = getattr(wildcards, "intervention", "zero")
    return {
        "kind": kind,
        **({"factor": settings["scale"]} if kind == "scale" else {}),
        **({"reference": settings["mean_reference"]} if kind == "mean" else {}),
    }


# --------------------------------------------------------------------- steering


STEER_KEYS = {  # the steering settings each kind of job depends on
    "neurons": ["strengths", "statistic"],
    "diffmean": ["steer_strengths", "steer_depths"],
}


def steering_settings(model, method):
    settings = method_settings(model, "steering")
    kind = "diffmean" if method == "diffmean" else "neurons"
    drop = {"pairs", "methods"} | {
        key for k, keys in STEER_KEYS.items() if k != kind for key in keys
    }
    return {key: value for key, value in settings.items() if key not in drop}


def steering_inputs(wildcards):
    """Model, both languages' corpora, and the method's selections and statistics."""
    model, source, target = wildcards.model, wildcards.source, wildcards.target
    corpus = corpus_of(model)
    inputs = {
        "model": model_input(wildcards),
        "source_corpus": corpus_file(corpus, source),
        "target_corpus": corpus_file(corpus, target),
    }
    if wildcards.method == "diffmean":
        inputs["source_hidden"] = unit_stats_file(model, source, "hidden")
        inputs["target_hidden"] = unit_stats_file(model, target, "hidden")
    else:
        inputs["source_selection"] = selection_file(model, wildcards.method, source)
        inputs["target_selection"] = selection_file(model, wildcards.method, target)
        inputs["target_stats"] = unit_stats_file(model, target)
    return inputs


def steering_pairs():
    return [tuple(pair) for pair in config["steering"]["pairs"]]


def steering_files(wildcards):
    methods = method_settings(wildcards.model, "steering")["methods"]
    return [
        paths.fill(paths.STEERING, model=wildcards.model, method=m, source=s, target=t)
        for m in methods
        for s, t in steering_pairs()
    ]


# ------------------------------------------------------------- generation cases


def cases_settings(model, lang):
    settings = method_settings(model, "cases")
    steering = method_settings(model, "steering")
    ablation = method_settings(model, "ablation")
    prompts = settings.get("prompts", {})
    return {
        **{k: v for k, v in settings.items() if k != "prompts"},
        "prompts": prompts.get(lang, prompts.get("en", [])),
        "english_prompts": prompts.get("en", []) if lang != "en" else [],
        "perturb": perturb_settings(model),
        **{
            key: steering[key]
            for key in ("steer_depths", "statistic", "batch_size", "max_length")
        },
        "classifier_languages": steering["classifier_languages"],
        "mean_reference": ablation["mean_reference"],
        "scale": ablation["scale"],
    }


def case_regions(lang):
    return ["top", "bottom", "random", "core"] + (
        [f"monolingual_{lang}"] if lang in REGION_LANGS else []
    )


def cases_inputs(wildcards):
    model, lang = wildcards.model, wildcards.lang
    inputs = {
        "model": model_input(wildcards),
        "mean_stats": mean_reference_files(model),
        "stats": unit_stats_file(model, lang),
        "hidden": unit_stats_file(model, lang, "hidden"),
        "en_hidden": unit_stats_file(model, "en", "hidden"),
    }
    for method in METHODS:
        inputs[f"sel_{method}"] = selection_file(model, method, lang)
    for region in case_regions(lang):
        inputs[f"region_{region}"] = paths.fill(
            paths.REGION, model=model, region=region
        )
    return inputs


# ---------------------------------------------------------------------- tasks


def task_spec(task):
    return cfg.task_spec(config, task)


def task_file(task, lang):
    return paths.fill(paths.TASK, task=task, lang=check_language(lang))


def task_source_input(wildcards):
    """What a task table is built from: a prepared corpus, a translated table, or nothing
    (a hub benchmark is read by the job; a local benchmark directory is its input)."""
    spec = task_spec(wildcards.task)
    source = spec["source"]
    if source == "corpus":
        return corpus_file(spec["corpus"], wildcards.lang)
    if source.startswith("translated:"):
        return paths.fill(
            paths.TRANSLATED, dataset=source.split(":", 1)[1], lang=wildcards.lang
        )
    dataset = spec.get("dataset", "")
    return dataset if dataset and Path(dataset).exists() else []


def subset_languages(subset):
    """`en-de` -> (en, de) (a translation direction); `de` -> (de, None)."""
    source, _, target = subset.partition("-")
    return check_language(source), (check_language(target) if target else None)


def task_eval_settings(model):
    """The task_eval settings with the PiM helpers and k (every task job's prompts)."""
    pim = config["pim"]
    return {
        **method_settings(model, "task_eval"),
        "pim_languages": [lang for lang in pim["languages"] if lang in LANGS],
        "pim_k": pim["k"],
        "inhibition": pim["inhibition"],
    }


def pim_task_inputs(wildcards):
    """Model and the task tables of the source, the target and the PiM helpers."""
    source, target = subset_languages(wildcards.subset)
    helpers = cfg.pim_helpers(config, source, target)
    langs = [source] + ([target] if target else []) + helpers
    inputs = {"model": model_input(wildcards)}
    inputs.update({f"task_{lang}": task_file(wildcards.task, lang) for lang in langs})
    return inputs


def stage_inputs(wildcards):
    """Model, the task tables of the language and English, the language's selection and
    both languages' eval corpora (perplexity)."""
    model, lang = wildcards.model, wildcards.subset
    method = config["layer_stages"]["method"]
    inputs = {
        "model": model_input(wildcards),
        "task_lang": task_file(wildcards.task, lang),
        "task_en": task_file(wildcards.task, "en"),
        "corpus_lang": corpus_file(corpus_of(model), lang),
        "corpus_en": corpus_file(corpus_of(model), "en"),
    }
    if wildcards.condition != "stage-none":  # the unablated cell reads no selection
        inputs["selection"] = selection_file(model, method, lang)
    return inputs


def stage_settings(model):
    stages = config["layer_stages"]
    ablation = method_settings(model, "ablation")
    return {
        **task_eval_settings(model),
        **{k: stages[k] for k in ("n_random", "seed", "method")},
        "stages": method_settings(model, "plnd").get("stages"),
        "ppl": {
            k: ablation[k]
            for k in ("split", "n_docs", "max_length", "batch_size", "max_tokens")
        },
    }


def pim_subsets(task):
    """The subsets of a PiM task: its directions (translation) or their source languages."""
    from workflow_scripts.tasks.build import task_type

    directions = config["pim"]["directions"]
    if task_type(task_spec(task)) == "translation":
        return [f"{s}-{t}" for s, t in directions]
    return list(dict.fromkeys(s for s, _ in directions))


def pim_files(wildcards):
    return [
        paths.fill(
            paths.TASK_EVAL, model=wildcards.model, task=task, subset=sub, condition=c
        )
        for task in config["pim"]["tasks"]
        for sub in pim_subsets(task)
        for c in config["pim"]["conditions"]
    ]


def stage_files(wildcards):
    stages = config["layer_stages"]
    return [
        paths.fill(
            paths.TASK_EVAL,
            model=wildcards.model,
            task=task,
            subset=lang,
            condition=f"stage-{cell}",
        )
        for task in stages["tasks"]
        for lang in stages["languages"]
        for cell in ["none"] + stages["cells"]
    ]


# -------------------------------------------------------------------- fine-tuning


def finetune_config(model):
    return method_settings(model, "finetune")


def finetune_variants(model, experiment, lang):
    """The experiment's variants for one trained language (the monolingual region only for
    region languages)."""
    variants = finetune_config(model)[f"{experiment}_variants"]
    if experiment == "forget" and lang not in REGION_LANGS:
        variants = [v for v in variants if v != "monolingual"]
    return variants


def finetune_files(model):
    ft = finetune_config(model)
    return [
        paths.fill(
            paths.FINETUNE, model=model, experiment=exp, lang=lang, variant=variant
        )
        for exp in ft["experiments"]
        for lang in ft["languages"]
        for variant in finetune_variants(model, exp, lang)
    ]


def finetune_eval_languages(model):
    return finetune_config(model)["eval_languages"] or LANGS


def finetune_inputs(wildcards):
    """Model, the trained language's corpus, every evaluation language's corpus, the task
    table, and the neuron set (enhance neurons / random) or the region (forget)."""
    model, lang, exp, variant = (
        wildcards.model,
        wildcards.lang,
        wildcards.experiment,
        wildcards.variant,
    )
    s = finetune_config(model)
    inputs = {
        "model": model_input(wildcards),
        "corpus": model_corpus(wildcards),
        "corpora": [
            corpus_file(corpus_of(model), e) for e in finetune_eval_languages(model)
        ],
        "base": paths.fill(paths.FINETUNE_BASE, model=model),
    }
    if s["task"] is not None:
        inputs["task"] = task_file(s["task"], lang)
    if exp == "enhance" and variant in ("neurons", "random"):
        inputs["selection"] = selection_file(model, s["enhance_method"], lang)
    if exp == "forget" and variant != "none":
        if variant == "monolingual" and lang not in REGION_LANGS:
            raise ValueError(
                f"finetune forget {lang}_monolingual: {lang} is not a region language "
                f"(regions.languages: {', '.join(REGION_LANGS)}), so it has no monolingual region"
            )
        name = f"monolingual_{lang}" if variant == "monolingual" else variant
        inputs["region"] = paths.fill(paths.REGION, model=model, region=name)
    return inputs


FINETUNE_EVAL = "eval_docs eval_max_length eval_max_tokens eval_batch_size".split()


def finetune_base_settings(wildcards):
    """The base measurement's settings (`batch_size`, `max_length`: its model job's)."""
    s = finetune_config(wildcards.model)
    out = {k: s[k] for k in FINETUNE_EVAL}
    return {
        **out,
        "batch_size": s["eval_batch_size"],
        "max_length": s["eval_max_length"],
    }


def finetune_base_inputs(wildcards):
    """Model, every evaluation language's corpus, the task of every trained language."""
    model = wildcards.model
    s = finetune_config(model)
    return {
        "model": model_input(wildcards),
        "corpora": [
            corpus_file(corpus_of(model), e) for e in finetune_eval_languages(model)
        ],
        "tasks": (
            [task_file(s["task"], lang) for lang in s["languages"]]
            if s["task"] is not None
            else []
        ),
    }


def finetune_settings(wildcards):
    """The job's training and evaluation settings (its rerun keys)."""
    s = finetune_config(wildcards.model)
    keys = "n_docs max_length batch_size grad_accum weight_decay trainable seed"
    keys += " checkpoint_every engine zero_stage keep_weights count_changed"
    out = {k: s[k] for k in keys.split() + FINETUNE_EVAL}
    if wildcards.experiment == "enhance":
        out["epochs"], out["lr"] = s["enhance_epochs"], s["enhance_lr"]
        if wildcards.variant in ("neurons", "random"):
            out["method"] = s["enhance_method"]
        if wildcards.variant == "full":
            out["lr"] = s["full_lr"]
        if wildcards.variant == "lora":
            out["lr"] = s["lora_lr"]
            out.update(
                {k: s[k] for k in ("lora_r", "lora_alpha", "lora_target_modules")}
            )
            out["parts"] = lora_parts(wildcards.model)
    else:
        out["steps"], out["lr"] = s["forget_steps"], s["forget_lr"]
    return out


def lora_parts(model):
    """The parts whose projections get adapters by default: those PLND scores."""
    if finetune_config(model)["enhance_method"] == "plnd":
        return method_settings(model, "plnd")["parts"]
    return ["ffn"]


def finetune_task_spec(wildcards):
    task = finetune_config(wildcards.model)["task"]
    return task_spec(task) if task is not None else None


def findings_inputs(wildcards):
    """Named inputs of the findings table of one model."""
    model = wildcards.model
    inputs = {f"ablation_{m}": ablation_file(model, m) for m in METHODS}
    for intervention in OTHER_INTERVENTIONS:
        for m in METHODS:
            inputs[f"ablation_{m}.{intervention}"] = ablation_by_file(
                model, m, intervention
            )
    for path in steering_files(wildcards):
        method, pair = Path(path).parent.name, Path(path).stem
        inputs[f"steer_{method}_{pair}"] = path
    inputs["region"] = ablation_file(model, "region")
    for cond in actcount_conditions():
        inputs[f"inhibition_{cond}"] = paths.fill(
            paths.INHIBITION, model=model, condition=cond
        )
    for method in ("plnd", "lape"):
        for lang in LANGS:
            inputs[f"sel_{method}_{lang}"] = selection_file(model, method, lang)
    for i, path in enumerate(pim_files(wildcards)):
        inputs[f"pim_{i}"] = path
    for i, path in enumerate(stage_files(wildcards)):
        inputs[f"stage_{i}"] = path
    if finetune_files(model):
        inputs["finetune"] = paths.fill(paths.FINETUNE_ALL, model=model)
    return inputs


def all_targets():
    figures = [
        paths.fill(paths.FIGURE, figure=fig, model=model)
        for model in MODELS
        for fig in FIGURES
    ]
    tables = [
        paths.fill(paths.TABLE, table=table, model=model, ext=ext)
        for model in MODELS
        for table, ext in [("findings", "csv"), ("cases", "html")]
    ]
    if config["pim"]["tasks"] and config["pim"]["directions"]:
        figures += [paths.fill(paths.FIGURE, figure="pim", model=m) for m in MODELS]
    if config["layer_stages"]["tasks"] and config["layer_stages"]["languages"]:
        figures += [
            paths.fill(paths.FIGURE, figure="layer_stages", model=m) for m in MODELS
        ]
    if steering_pairs():
        figures += [
            paths.fill(paths.FIGURE, figure="steering", model=model) for model in MODELS
        ]
    figures += [
        paths.fill(paths.FIGURE, figure="finetune", model=model)
        for model in MODELS
        if finetune_files(model)
    ]
    return figures + tables
