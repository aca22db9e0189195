"""Neuron statistics per model and condition/language."""


rule count_activations:
    input:
        model=model_input,
        corpora=lambda wc: actcount_corpora(wc).values(),
    output:
        counts="results/activations/{model}/{condition}.parquet",
        inhibition="results/activations/{model}/{condition}.inhibition.parquet",
    log:
        f"{LOGS}/count_activations/{{model}}/{{condition}}.log",
    benchmark:
        f"{BENCH}/count_activations/{{model}}/{{condition}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        **model_cluster_resources(),
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model).get("dtype", "float32"),
        corpora=actcount_corpora,
        settings=actcount_settings,
    script:
        "../workflow_scripts/steps/count_activations.py"


rule plnd_stats:
    input:
        model=model_input,
        corpus=lambda wc: corpus_file(corpus_of(wc.model), wc.lang),
    output:
        "results/stats/{model}/plnd/{lang}.parquet",
    log:
        f"{LOGS}/plnd_stats/{{model}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/plnd_stats/{{model}}/{{lang}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        **model_cluster_resources(),
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model)["dtype"],
        settings=lambda wc: stats_settings(wc, "plnd"),
    script:
        "../workflow_scripts/steps/plnd_stats.py"


rule lape_stats:
    input:
        model=model_input,
        corpus=lambda wc: corpus_file(corpus_of(wc.model), wc.lang),
    output:
        "results/stats/{model}/lape/{lang}.parquet",
    log:
        f"{LOGS}/lape_stats/{{model}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/lape_stats/{{model}}/{{lang}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        **model_cluster_resources(),
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model)["dtype"],
        settings=lambda wc: stats_settings(wc, "lape"),
    script:
        "../workflow_scripts/steps/lape_stats.py"


rule select_neurons:
    input:
        lambda wc: stats_files(wc).values(),
    output:
        [f"results/neurons/{{model}}/{{method}}/{lang}.parquet" for lang in LANGS],
    log:
        f"{LOGS}/select_neurons/{{model}}/{{method}}.log",
    benchmark:
        f"{BENCH}/select_neurons/{{model}}/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(METHODS),
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        langs=LANGS,
        settings=selection_settings,
    script:
        "../workflow_scripts/steps/select_neurons.py"


rule logit_lens:
    input:
        model=model_input,
        corpus=lambda wc: corpus_file(corpus_of(wc.model), wc.lang),
    output:
        "results/logit_lens/{model}/{lang}.parquet",
    log:
        f"{LOGS}/logit_lens/{{model}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/logit_lens/{{model}}/{{lang}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        **model_cluster_resources(),
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model)["dtype"],
        settings=lambda wc: method_settings(wc.model, "logit_lens"),
    script:
        "../workflow_scripts/steps/logit_lens.py"
