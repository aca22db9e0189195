"""Ablation: deactivate each language's selected neurons, measure perplexity in every language."""


rule ablate_neurons:
    input:
        model=model_input,
        selection="results/neurons/{model}/{method}/{lang}.parquet",
        corpora=lambda wc: eval_corpora(wc.model).values(),
    output:
        "results/ablation/{model}/{method}/{lang}.parquet",
    log:
        f"{LOGS}/ablate_neurons/{{model}}/{{method}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/ablate_neurons/{{model}}/{{method}}/{{lang}}.tsv"
    wildcard_constraints:
        method="|".join(METHODS),
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
        corpora=lambda wc: eval_corpora(wc.model),
        settings=lambda wc: method_settings(wc.model, "ablation"),
    script:
        "../workflow_scripts/steps/ablate_neurons.py"


rule perturb_regions:
    input:
        model=model_input,
        region="results/regions/{model}/{region}.parquet",
        corpora=lambda wc: eval_corpora(wc.model).values(),
    output:
        "results/ablation/{model}/region/{region}.parquet",
    log:
        f"{LOGS}/perturb_regions/{{model}}/{{region}}.log",
    benchmark:
        f"{BENCH}/perturb_regions/{{model}}/{{region}}.tsv"
    wildcard_constraints:
        region="|".join(PERTURBED),
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
        corpora=lambda wc: eval_corpora(wc.model),
        settings=lambda wc: method_settings(wc.model, "ablation"),
        regions=lambda wc: perturb_settings(wc.model),
    script:
        "../workflow_scripts/steps/perturb_regions.py"


rule collect_ablation:
    input:
        ablation_parts,
    output:
        "results/ablation/{model}/{method}.parquet",
    log:
        f"{LOGS}/collect_ablation/{{model}}/{{method}}.log",
    benchmark:
        f"{BENCH}/collect_ablation/{{model}}/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(METHODS + ("region",)),
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        method=lambda wc: wc.method,
    script:
        "../workflow_scripts/steps/collect_ablation.py"


rule plot_ablation:
    input:
        lambda wc: [
            f"results/ablation/{wc.model}/{method}.parquet" for method in METHODS
        ],
    output:
        report(
            "results/figures/ablation_{model}.png",
            caption="../resources/report/ablation.rst",
            category="Ablation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "ablation"},
        ),
    log:
        f"{LOGS}/plot_ablation/{{model}}.log",
    benchmark:
        f"{BENCH}/plot_ablation/{{model}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=METHODS,
    script:
        "../workflow_scripts/steps/plot_ablation.py"
