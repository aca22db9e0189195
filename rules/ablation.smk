"""Ablation: deactivate each language's selected neurons, or perturb each region, and
measure perplexity in every language."""


rule ablation_base:
    input:
        model=model_input,
        corpus=model_corpus,
    output:
        paths.ABLATION_BASE,
    log:
        logs("ablation_base", "model", "lang"),
    benchmark:
        benchmarks("ablation_base", "model", "lang")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: base_ppl_settings(wc.model),
    script:
        "../workflow_scripts/steps/ablation_base.py"


rule ablate_neurons:
    input:
        model=model_input,
        selection=paths.NEURONS,
        corpora=lambda wc: eval_corpora(wc.model).values(),
        bases=lambda wc: ablation_base_files(wc.model),
    output:
        paths.NEURON_ABLATION,
    log:
        logs("ablate_neurons", "model", "method", "lang"),
    benchmark:
        benchmarks("ablate_neurons", "model", "method", "lang")
    wildcard_constraints:
        method="|".join(ALL_METHODS),
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        languages=LANGS,
        settings=lambda wc: method_settings(wc.model, "ablation"),
        intervention=ablation_intervention,
    script:
        "../workflow_scripts/steps/ablate_neurons.py"


use rule ablate_neurons as ablate_neurons_by with:
    input:
        model=model_input,
        selection=paths.NEURONS,
        corpora=lambda wc: eval_corpora(wc.model).values(),
        bases=lambda wc: ablation_base_files(wc.model),
        mean_stats=lambda wc: (
            mean_reference_files(wc.model) if wc.intervention == "mean" else []
        ),
    output:
        paths.NEURON_ABLATION_BY,
    log:
        logs("ablate_neurons", "model", "method", "{lang}.{intervention}"),
    benchmark:
        benchmarks("ablate_neurons", "model", "method", "{lang}.{intervention}")
    wildcard_constraints:
        method="|".join(METHODS),
        intervention="scale|mean",


rule perturb_regions:
    input:
        model=model_input,
        region=paths.REGION,
        corpora=lambda wc: eval_corpora(wc.model).values(),
        bases=lambda wc: ablation_base_files(wc.model),
    output:
        paths.REGION_ABLATION,
    log:
        logs("perturb_regions", "model", "region"),
    benchmark:
        benchmarks("perturb_regions", "model", "region")
    wildcard_constraints:
        region="|".join(PERTURBED),
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        languages=LANGS,
        settings=lambda wc: method_settings(wc.model, "ablation"),
        regions=lambda wc: perturb_settings(wc.model),
    script:
        "../workflow_scripts/steps/perturb_regions.py"


rule collect_ablation:
    input:
        ablation_parts,
    output:
        paths.ABLATION,
    log:
        logs("collect_ablation", "model", "method"),
    benchmark:
        benchmarks("collect_ablation", "model", "method")
    wildcard_constraints:
        method="|".join(ALL_METHODS + ("region",)),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/steps/collect_ablation.py"


use rule collect_ablation as collect_ablation_by with:
    input:
        ablation_by_parts,
    output:
        paths.ABLATION_BY,
    log:
        logs("collect_ablation", "model", "{method}.{intervention}"),
    benchmark:
        benchmarks("collect_ablation", "model", "{method}.{intervention}")
    wildcard_constraints:
        method="|".join(METHODS),
        intervention="scale|mean",


rule plot_ablation:
    input:
        lambda wc: [ablation_file(wc.model, method) for method in METHODS],
    output:
        report(
            paths.fill(paths.FIGURE, figure="ablation"),
            caption="../resources/report/ablation.rst",
            category="Ablation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "ablation"},
        ),
    log:
        logs("plot_ablation", "model"),
    benchmark:
        benchmarks("plot_ablation", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=METHODS,
    script:
        "../workflow_scripts/steps/plot_ablation.py"
