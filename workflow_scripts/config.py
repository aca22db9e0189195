"""The workflow's configuration in one place: the schema, its defaults, and the checks that
one schema cannot express (docs/configuration.md).

Used by the Snakefile (``validate_config``) and by every command-line entry point, so a
config is judged the same way wherever it is read. Each setting's meaning and default is
in ``resources/schemas/config.schema.yaml``; which settings a job depends on (its rerun
keys) is declared next to the function that uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.languages import check_language

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "resources" / "schemas" / "config.schema.yaml"
BUNDLED_CORPUS = REPO / "resources" / "corpus" / "bundled.parquet"
MODEL_KINDS = ("path", "gguf", "tiny")
# sections a model entry may override (merged over the global section, then validated)
MODEL_OVERRIDES = ("placement", "plnd", "lape", "experts", "logit_lens", "ablation", "regions")
MODEL_OVERRIDES += ("finetune",)
MODEL_OVERRIDES += ("unit_stats", "steering", "cases", "task_eval")


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text())


def schema_defaults(section: str) -> dict[str, Any]:
    """Defaults of one object section of the schema's ``definitions`` (nested objects too)."""
    props = load_schema()["definitions"][section]["properties"]
    out: dict[str, Any] = {}
    for key, prop in props.items():
        if "default" in prop:
            out[key] = prop["default"]
        elif prop.get("type") == "object" and "properties" in prop:
            out[key] = {k: p["default"] for k, p in prop["properties"].items() if "default" in p}
    return out


def validate_definition(name: str, value: Any, what: str | None = None) -> None:
    """Check ``value`` against the schema definition ``name``; ``ValueError`` naming the key."""
    import jsonschema

    root = load_schema()
    schema = {"$ref": f"#/definitions/{name}", "definitions": root["definitions"]}
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        raise ValueError(f"config {what or name} {where}: {err.message}") from None


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the schema (filling in its defaults, in place) and run
    the cross-field checks; returns ``config``. Raises one clear error naming the culprit."""
    from snakemake.utils import validate

    validate(config, str(SCHEMA))
    check_cross_fields(config)
    return config


def model_kind(spec: Mapping[str, Any]) -> str:
    return next(kind for kind in MODEL_KINDS if kind in spec)


def method_settings(config: Mapping[str, Any], model: str, method: str) -> dict[str, Any]:
    """Global settings of ``method`` with the model's overrides."""
    return {**config[method], **config["models"][model].get(method, {})}


def placement_of(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The model's placement: the global section, its overrides, the GPU batch sizes merged
    key by key (schema defaults first, so a config that was never validated works too)."""
    glob, own = config.get("placement", {}), config["models"][model].get("placement", {})
    defaults = schema_defaults("placement")
    out = {**defaults, **glob, **own}
    out["batch_size"] = {
        **defaults["batch_size"],
        **glob.get("batch_size", {}),
        **own.get("batch_size", {}),
    }
    return out


def translated_dataset(config: Mapping[str, Any]) -> str | None:
    """The dataset the parallel condition reads (``translated:<dataset>``), or None."""
    source = config["actcount"]["parallel_source"]
    return source.split(":", 1)[1] if source.startswith("translated:") else None


def check_cross_fields(config: Mapping[str, Any]) -> None:
    """What the schema cannot say: keys that must name each other, languages, model paths."""
    from workflow_scripts.models.loading import check_model_path

    for lang in config["languages"]:
        check_language(lang)
    corpora, datasets = config["corpora"], config["datasets"]
    for model, spec in config["models"].items():
        if spec["corpus"] not in corpora:
            raise ValueError(
                f"model {model!r}: corpus {spec['corpus']!r} is not a key under corpora: "
                f"({', '.join(corpora)})"
            )
        if "path" in spec:
            check_model_path(spec["path"])
        if "languages" in spec.get("regions", {}):
            raise ValueError(
                f"model {model!r}: regions.languages is global (set it under regions:)"
            )
        if "languages" in spec.get("finetune", {}):
            raise ValueError(
                f"model {model!r}: finetune.languages is global (set it under finetune:)"
            )
        if "pairs" in spec.get("steering", {}):
            raise ValueError(f"model {model!r}: steering.pairs is global (set it under steering:)")
        for method in MODEL_OVERRIDES:  # per-model overrides obey the schema
            if method in spec:
                merged = (
                    placement_of(config, model)
                    if method == "placement"
                    else {**config[method], **spec[method]}
                )
                validate_definition(method, merged, f"models.{model}.{method}")
    actcount = config["actcount"]
    for lang in actcount["parallel_languages"] + [
        c for c in actcount.get("conditions", []) if c != "parallel"
    ]:
        check_language(lang)
    for lang in config["regions"]["languages"]:
        check_language(lang)
    evaluated = [method_settings(config, m, "finetune")["eval_languages"] for m in config["models"]]
    for lang in config["finetune"]["languages"] + [x for langs in evaluated for x in langs]:
        check_language(lang)
        if lang not in config["languages"]:
            raise ValueError(
                f"finetune: language {lang!r} is not one of languages: {config['languages']}"
            )
    check_interventions(config)
    check_tasks(config)
    for spec in datasets.values():
        for lang in [spec["source_lang"], *spec["languages"]]:
            check_language(lang)
    name = translated_dataset(config)
    if name is not None:
        if name not in datasets:
            raise ValueError(
                f"actcount.parallel_source: {actcount['parallel_source']!r} names no "
                f"dataset under datasets: ({', '.join(datasets) or 'none'})"
            )
        have = {datasets[name]["source_lang"], *datasets[name]["languages"]}
        missing = [c for c in actcount["parallel_languages"] if c not in have]
        if missing:
            raise ValueError(
                f"actcount.parallel_languages {missing} are not languages of dataset {name!r} "
                f"({', '.join(sorted(have))}): add them to datasets.{name}.languages"
            )


def check_interventions(config: Mapping[str, Any]) -> None:
    """Steering pairs, the mean reference and the cases' prompts name configured languages
    (whose corpora the workflow prepares)."""
    langs = config["languages"]
    for source, target in config["steering"]["pairs"]:
        if source == target:
            raise ValueError(f"steering.pairs: {source}->{target} steers a language to itself")
        for lang in (source, target):
            if lang not in langs:
                raise ValueError(
                    f"steering.pairs: {lang!r} of the pair {source}->{target} is not one of "
                    f"languages: ({', '.join(langs)}), so it has no corpus"
                )
    ablation = config["ablation"]
    other = [i for i in ablation["interventions"] if i != "zero"]
    if other and ablation["mode"] == "weights":
        raise ValueError(
            f"ablation.interventions {other} act through hooks: set ablation.mode to hooks"
        )
    ref = ablation["mean_reference"]
    if ref != "all" and ref not in langs:
        raise ValueError(
            f"ablation.mean_reference: {ref!r} is neither 'all' nor one of languages: "
            f"({', '.join(langs)})"
        )
    for lang in config["cases"].get("prompts", {}):
        check_language(lang)


def task_spec(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The definition of task ``task``, or one clear error naming the configured tasks."""
    tasks = config["tasks"]
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}: configured tasks are ({', '.join(tasks)})")
    return tasks[task]


def check_tasks(config: Mapping[str, Any]) -> None:
    """Task sources name configured corpora / datasets; the experiments name configured
    tasks and languages; the layer-stage experiment needs a task that is not a translation."""
    langs = config["languages"]
    for name, spec in config["tasks"].items():
        source = spec["source"]
        if source == "corpus" and spec["corpus"] not in config["corpora"]:
            raise ValueError(
                f"tasks.{name}.corpus: {spec['corpus']!r} is not a key under corpora: "
                f"({', '.join(config['corpora'])})"
            )
        if source == "huggingface" and "benchmark" not in spec:
            raise ValueError(f"tasks.{name}: source huggingface needs a benchmark (its layout)")
        if source.startswith("translated:") and source.split(":", 1)[1] not in config["datasets"]:
            raise ValueError(
                f"tasks.{name}.source: {source!r} names no dataset under datasets: "
                f"({', '.join(config['datasets']) or 'none'})"
            )
    from workflow_scripts.tasks.build import task_type

    pim, stages = config["pim"], config["layer_stages"]
    for name in pim["tasks"]:
        task_spec(config, name)
    for name in stages["tasks"]:
        if task_type(task_spec(config, name)) == "translation":
            raise ValueError(
                f"layer_stages.tasks: {name!r} is a translation task; the layer-stage "
                "ablation evaluates a task in each language and in English (e.g. continuation)"
            )
    if not pim["tasks"]:  # an experiment without tasks runs nothing: its languages are unused
        pim = {**pim, "directions": []}
    if not stages["tasks"]:
        stages = {**stages, "languages": []}
    for lang in pim["languages"]:
        check_language(lang)
    for source, target in pim["directions"]:
        if source == target:
            raise ValueError(f"pim.directions: {source}->{target} translates a language to itself")
        helpers = pim_helpers(config, source, target)
        if "pim" in pim["conditions"] and len(helpers) < pim["k"]:
            raise ValueError(
                f"pim.k = {pim['k']}: {source}->{target} has only {len(helpers)} helper "
                f"languages among pim.languages ({', '.join(pim['languages'])}) that are "
                f"configured languages: ({', '.join(langs)})"
            )
    for where, codes in (
        ("pim.directions", [c for pair in pim["directions"] for c in pair]),
        ("layer_stages.languages", stages["languages"]),
    ):
        for lang in codes:
            if lang not in langs:
                raise ValueError(f"{where}: {lang!r} is not one of languages: ({', '.join(langs)})")
    if "en" in stages["languages"]:
        raise ValueError("layer_stages.languages: en is the comparison language; leave it out")
    if stages["languages"] and "en" not in langs:
        raise ValueError("layer_stages needs en among languages (the comparison language)")
    task = config["finetune"]["task"]  # checked only where fine-tuning jobs would read it
    if (
        task is not None
        and config["finetune"]["languages"]
        and task_type(task_spec(config, task)) == "translation"
    ):
        raise ValueError(
            f"finetune.task: {task!r} is a translation task; the fine-tuning experiments score "
            "a task in the trained language alone (e.g. continuation)"
        )


def pim_helpers(config: Mapping[str, Any], source: str, target: str | None) -> list[str]:
    """The PiM helper languages of a source (-> target): the first ``pim.k`` of
    ``pim.languages`` that are configured languages and neither source nor target."""
    pim = config["pim"]
    usable = [
        lang
        for lang in pim["languages"]
        if lang in config["languages"] and lang not in (source, target)
    ]
    return usable[: pim["k"]]
