"""Figures: one file per figure and model."""


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


rule plot_activations:
    input:
        counts=lambda wc: activation_files(wc).values(),
        inhibition=lambda wc: inhibition_files(wc).values(),
    output:
        heatmap="results/figures/heatmap_{model}.png",
        inhibition="results/figures/inhibition_{model}.png",
        peaks="results/figures/peaks_{model}.png",
    params:
        conditions=actcount_conditions(),
        select_proportion=config["actcount"]["select_proportion"],
    log:
        f"{LOGS}/plot_activations/{{model}}.log",
    benchmark:
        f"{BENCH}/plot_activations/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/plot_activations.py"
