"""Figures: one file per figure and model."""


rule plot_activations:
    input:
        counts=activation_files,
        inhibition=inhibition_files,
    output:
        heatmap=report(
            paths.fill(paths.FIGURE, figure="heatmap"),
            caption="../resources/report/heatmap.rst",
            category="Activation counting",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "heatmap"},
        ),
        inhibition=report(
            paths.fill(paths.FIGURE, figure="inhibition"),
            caption="../resources/report/inhibition.rst",
            category="Activation counting",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "inhibition"},
        ),
        peaks=report(
            paths.fill(paths.FIGURE, figure="peaks"),
            caption="../resources/report/peaks.rst",
            category="Activation counting",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "peaks"},
        ),
    log:
        logs("plot_activations", "model"),
    benchmark:
        benchmarks("plot_activations", "model")
    conda:
        ENV
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
        selections=lambda wc: selection_files(wc.model),
        logit_lens=lambda wc: logit_lens_files(wc.model),
    output:
        layers=report(
            paths.fill(paths.FIGURE, figure="layers"),
            caption="../resources/report/layers.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "layers"},
        ),
        overlap=report(
            paths.fill(paths.FIGURE, figure="overlap"),
            caption="../resources/report/overlap.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "overlap"},
        ),
        logit_lens=report(
            paths.fill(paths.FIGURE, figure="logit_lens"),
            caption="../resources/report/logit_lens.rst",
            category="Logit lens",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "logit_lens"},
        ),
        counts=report(
            paths.fill(paths.TABLE, table="neurons", ext="csv"),
            caption="../resources/report/neurons_table.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "neurons table"},
        ),
        jaccard=report(
            paths.fill(paths.TABLE, table="overlap", ext="csv"),
            caption="../resources/report/overlap_table.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "overlap table"},
        ),
    log:
        logs("plot_neurons", "model"),
    benchmark:
        benchmarks("plot_neurons", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        methods=METHODS,
        languages=LANGS,
        final_norm=lambda wc: method_settings(wc.model, "logit_lens")["final_norm"],
        stages=lambda wc: method_settings(wc.model, "plnd").get("stages"),
    script:
        "../workflow_scripts/steps/plot_neurons.py"


rule plot_regions:
    input:
        summary=paths.fill(paths.TABLE, table="regions", ext="csv"),
        perturbation=paths.fill(paths.ABLATION, method="region"),
    output:
        report(
            paths.fill(paths.FIGURE, figure="regions"),
            caption="../resources/report/regions.rst",
            category="Linguistic regions",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "regions"},
        ),
    log:
        logs("plot_regions", "model"),
    benchmark:
        benchmarks("plot_regions", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/plot_regions.py"


rule plot_experts:
    input:
        stats=lambda wc: stats_files(wc, "experts"),
        selections=lambda wc: [
            selection_file(wc.model, "experts", lang) for lang in LANGS
        ],
    output:
        report(
            paths.fill(paths.FIGURE, figure="experts"),
            caption="../resources/report/experts.rst",
            category="Language-specific neurons",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "experts"},
        ),
    log:
        logs("plot_experts", "model"),
    benchmark:
        benchmarks("plot_experts", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        languages=LANGS,
    script:
        "../workflow_scripts/steps/plot_experts.py"
