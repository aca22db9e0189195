"""Figures: one file per figure and model."""


rule plot_activations:
    input:
        counts=lambda wc: activation_files(wc).values(),
        inhibition=lambda wc: inhibition_files(wc).values(),
    output:
        heatmap="results/figures/heatmap_{model}.png",
        inhibition="results/figures/inhibition_{model}.png",
        peaks="results/figures/peaks_{model}.png",
    log:
        f"{LOGS}/plot_activations/{{model}}.log",
    benchmark:
        f"{BENCH}/plot_activations/{{model}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        conditions=actcount_conditions(),
        select_proportion=config["actcount"]["select_proportion"],
    script:
        "../workflow_scripts/steps/plot_activations.py"
