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
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
        gpu=lambda wc: model_resources(wc.model, "gpu"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model).get("dtype", "float32"),
        corpora=actcount_corpora,
        settings=actcount_settings,
    script:
        "../workflow_scripts/steps/count_activations.py"
