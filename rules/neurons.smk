"""Neuron statistics per model and condition/language, and the language-specific selections."""


rule count_activations:
    input:
        model=model_input,
        corpora=lambda wc: actcount_corpora(wc).values(),
    output:
        counts=paths.ACTIVATIONS,
        inhibition=paths.INHIBITION,
    log:
        logs("count_activations", "model", "condition"),
    benchmark:
        benchmarks("count_activations", "model", "condition")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        languages=lambda wc: list(actcount_corpora(wc)),
        settings=actcount_settings,
    script:
        "../workflow_scripts/steps/count_activations.py"


rule plnd_stats:
    input:
        model=model_input,
        corpus=model_corpus,
    output:
        paths.fill(paths.STATS, method="plnd"),
    log:
        logs("plnd_stats", "model", "lang"),
    benchmark:
        benchmarks("plnd_stats", "model", "lang")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: stats_settings(wc, "plnd"),
    script:
        "../workflow_scripts/steps/plnd_stats.py"


rule lape_stats:
    input:
        model=model_input,
        corpus=model_corpus,
    output:
        paths.fill(paths.STATS, method="lape"),
    log:
        logs("lape_stats", "model", "lang"),
    benchmark:
        benchmarks("lape_stats", "model", "lang")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: stats_settings(wc, "lape"),
    script:
        "../workflow_scripts/steps/lape_stats.py"


rule routing_stats:
    input:
        model=model_input,
        corpus=model_corpus,
    output:
        paths.fill(paths.STATS, method="experts"),
    log:
        logs("routing_stats", "model", "lang"),
    benchmark:
        benchmarks("routing_stats", "model", "lang")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: stats_settings(wc, "experts"),
    script:
        "../workflow_scripts/steps/routing_stats.py"


rule select_neurons:
    input:
        stats_files,
    output:
        [paths.fill(paths.NEURONS, lang=lang) for lang in LANGS],
    log:
        logs("select_neurons", "model", "method"),
    benchmark:
        benchmarks("select_neurons", "model", "method")
    wildcard_constraints:
        method="|".join(ALL_METHODS),
    conda:
        ENV
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
        corpus=model_corpus,
    output:
        paths.LOGIT_LENS,
    log:
        logs("logit_lens", "model", "lang"),
    benchmark:
        benchmarks("logit_lens", "model", "lang")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: method_settings(wc.model, "logit_lens"),
    script:
        "../workflow_scripts/steps/logit_lens.py"
