"""Neuron statistics per model and condition/language."""


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


rule count_activations:
    input:
        model=model_input,
        corpora=lambda wc: actcount_corpora(wc).values(),
    output:
        counts="results/activations/{model}/{condition}.parquet",
        inhibition="results/activations/{model}/{condition}.inhibition.parquet",
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model).get("dtype", "float32"),
        corpora=actcount_corpora,
        settings=actcount_settings,
    log:
        f"{LOGS}/count_activations/{{model}}/{{condition}}.log",
    benchmark:
        f"{BENCH}/count_activations/{{model}}/{{condition}}.tsv"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
        gpu=lambda wc: model_resources(wc.model, "gpu"),
    script:
        "../workflow_scripts/steps/count_activations.py"
