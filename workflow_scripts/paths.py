"""The path contract: every file the DAG writes, one template per kind (docs/dataflow.md).

Rules use the templates as outputs (the ``{...}`` fields are Snakemake wildcards), input
functions and command-line entry points fill them with :func:`fill`. Library functions
never build these paths: they take and return plain paths.
"""

from __future__ import annotations

import string

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
# resumable training state, outside any rule output (Snakemake deletes failed outputs)
CHECKPOINTS = f"{RESULTS}/checkpoints"

CORPUS = f"{RESULTS}/corpus/{{corpus}}/{{lang}}.parquet"
TRANSLATED = f"{RESULTS}/translated/{{dataset}}/{{lang}}.parquet"
TRANSLATION_REPORT = f"{RESULTS}/translated/{{dataset}}/{{lang}}.report.json"
# outside the outputs, so a failed or killed job keeps what it paid for
TRANSLATION_CACHE = f"{RESULTS}/translated/.cache/{{dataset}}/{{lang}}.jsonl"
MODEL_DIR = f"{RESULTS}/models/{{model}}"
ACTIVATIONS = f"{RESULTS}/activations/{{model}}/{{condition}}.parquet"
INHIBITION = f"{RESULTS}/activations/{{model}}/{{condition}}.inhibition.parquet"
STATS = f"{RESULTS}/stats/{{model}}/{{method}}/{{lang}}.parquet"
NEURONS = f"{RESULTS}/neurons/{{model}}/{{method}}/{{lang}}.parquet"
LOGIT_LENS = f"{RESULTS}/logit_lens/{{model}}/{{lang}}.parquet"
REGION_SCORES = f"{RESULTS}/regions/{{model}}/{{score}}/{{lang}}.safetensors"
REGION = f"{RESULTS}/regions/{{model}}/{{region}}.parquet"
# the fine-tuning experiments (enhance, forget): metrics before/after per job, collected
FINETUNE = f"{RESULTS}/finetune/{{model}}/{{experiment}}/{{lang}}_{{variant}}.parquet"
FINETUNE_ALL = f"{RESULTS}/finetune/{{model}}.parquet"
# the unmodified model's measurement every fine-tuning job of the model compares with
FINETUNE_BASE = f"{RESULTS}/finetune/{{model}}/base.parquet"
# fine-tuned weights, written only with finetune.keep_weights (not a rule output: large)
FINETUNED = f"{RESULTS}/finetuned/{{model}}/{{experiment}}/{{lang}}_{{variant}}"
NEURON_ABLATION = f"{RESULTS}/ablation/{{model}}/{{method}}/{{lang}}.parquet"
# the unablated perplexity of one evaluation language, read by every ablation of the model
ABLATION_BASE = f"{RESULTS}/ablation/{{model}}/base/{{lang}}.parquet"
REGION_ABLATION = f"{RESULTS}/ablation/{{model}}/region/{{region}}.parquet"
ABLATION = f"{RESULTS}/ablation/{{model}}/{{method}}.parquet"
FIGURE = f"{RESULTS}/figures/{{figure}}_{{model}}.png"
TABLE = f"{RESULTS}/tables/{{table}}_{{model}}.{{ext}}"
# interventions' statistics (STATS with method means / hidden), steering, generation cases
UNIT_STATS = f"{RESULTS}/stats/{{model}}/means/{{lang}}.parquet"
HIDDEN_MEANS = f"{RESULTS}/stats/{{model}}/hidden/{{lang}}.parquet"
STEERING = f"{RESULTS}/steering/{{model}}/{{method}}/{{source}}_{{target}}.parquet"
CASES = f"{RESULTS}/cases/{{model}}/{{lang}}.parquet"
# an ablation under another intervention than zero (results/ablation/{model}/{method}.mean.parquet)
NEURON_ABLATION_BY = f"{RESULTS}/ablation/{{model}}/{{method}}/{{lang}}.{{intervention}}.parquet"
ABLATION_BY = f"{RESULTS}/ablation/{{model}}/{{method}}.{{intervention}}.parquet"
# task data and task evaluation (subset: a language, or source-target of a translation task)
TASK = f"{RESULTS}/tasks/{{task}}/{{lang}}.parquet"
TASK_EVAL = f"{RESULTS}/eval/{{model}}/{{task}}/{{subset}}.{{condition}}.parquet"


def fill(template: str, **values: object) -> str:
    """``template`` with the named fields filled; the others stay ``{field}`` wildcards.

    ``fill(STATS, method="plnd")`` -> ``results/stats/{model}/plnd/{lang}.parquet``.
    """
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    unknown = set(values) - fields
    if unknown:
        raise KeyError(f"{template}: no field {sorted(unknown)}")
    return template.format(**{name: values.get(name, f"{{{name}}}") for name in fields})


def job_path(root: str, rule: str, *parts: str) -> str:
    """``{root}/{rule}/{w1}/{w2}``: a part is a wildcard name (``lang`` -> ``{lang}``) or a
    pattern that already holds wildcards (``{lang}_freeze_{region}``)."""
    return "/".join([root, rule, *(p if "{" in p else f"{{{p}}}" for p in parts)])


def log(rule: str, *parts: str) -> str:
    """``results/logs/{rule}/{w1}/{w2}.log`` for a rule's ``log:``."""
    return job_path(LOGS, rule, *parts) + ".log"


def benchmark(rule: str, *parts: str) -> str:
    """``results/benchmarks/{rule}/{w1}/{w2}.tsv`` for a rule's ``benchmark:``."""
    return job_path(BENCHMARKS, rule, *parts) + ".tsv"
