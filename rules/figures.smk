"""Figures: one file per figure and model."""


rule plot_activations:
    input:
        counts=lambda wc: activation_files(wc).values(),
        inhibition=lambda wc: inhibition_files(wc).values(),
    output:
        heatmap=report(
            "results/figures/heatmap_{model}.png",
            caption="../resources/report/heatmap.rst",
            category="Activation counting",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "heatmap"},
        ),
        inhibition=report(
            "results/figures/inhibition_{model}.png",
            caption="../resources/report/inhibition.rst",
            category="Activation counting",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "inhibition"},
        ),
        peaks=report(
            "results/figures/peaks_{model}.png",
            caption="../resources/report/peaks.rst",
            category="Activation counting",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "peaks"},
        ),
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


rule plot_neurons:
    input:
        selections=lambda wc: [
            path
            for paths in selection_files(wc.model).values()
            for path in paths.values()
        ],
        logit_lens=lambda wc: [
            f"results/logit_lens/{wc.model}/{lang}.parquet" for lang in LANGS
        ],
    output:
        layers=report(
            "results/figures/layers_{model}.png",
            caption="../resources/report/layers.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "layers"},
        ),
        overlap=report(
            "results/figures/overlap_{model}.png",
            caption="../resources/report/overlap.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "overlap"},
        ),
        logit_lens=report(
            "results/figures/logit_lens_{model}.png",
            caption="../resources/report/logit_lens.rst",
            category="Logit lens",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "logit_lens"},
        ),
        counts=report(
            "results/tables/neurons_{model}.csv",
            caption="../resources/report/neurons_table.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "neurons table"},
        ),
        jaccard=report(
            "results/tables/overlap_{model}.csv",
            caption="../resources/report/overlap_table.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "overlap table"},
        ),
    log:
        f"{LOGS}/plot_neurons/{{model}}.log",
    benchmark:
        f"{BENCH}/plot_neurons/{{model}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        tables=lambda wc: selection_files(wc.model),
        logit_lens=lambda wc: {
            lang: f"results/logit_lens/{wc.model}/{lang}.parquet" for lang in LANGS
        },
        final_norm=lambda wc: method_settings(wc.model, "logit_lens")["final_norm"],
        stages=lambda wc: method_settings(wc.model, "plnd").get("stages"),
    script:
        "../workflow_scripts/steps/plot_neurons.py"


rule plot_regions:
    input:
        summary="results/tables/regions_{model}.csv",
        perturbation="results/ablation/{model}/region.parquet",
    output:
        report(
            "results/figures/regions_{model}.png",
            caption="../resources/report/regions.rst",
            category="Linguistic regions",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "regions"},
        ),
    log:
        f"{LOGS}/plot_regions/{{model}}.log",
    benchmark:
        f"{BENCH}/plot_regions/{{model}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/plot_regions.py"
