"""Interventions beyond zeroing: per-language unit statistics, output-language steering,
generation cases (docs/methods.md, "Interventions" and "Output-language steering")."""


rule unit_stats:
    input:
        model=model_input,
        corpus=model_corpus,
    output:
        units=paths.UNIT_STATS,
        hidden=paths.HIDDEN_MEANS,
    log:
        logs("unit_stats", "model", "lang"),
    benchmark:
        benchmarks("unit_stats", "model", "lang")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: method_settings(wc.model, "unit_stats"),
    script:
        "../workflow_scripts/steps/unit_stats.py"


rule steer:
    input:
        unpack(steering_inputs),
    output:
        paths.STEERING,
    log:
        logs("steer", "model", "method", "{source}_{target}"),
    benchmark:
        benchmarks("steer", "model", "method", "{source}_{target}")
    wildcard_constraints:
        method="|".join(STEERING_METHODS),
        source="[a-z]{2}",
        target="[a-z]{2}",
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: steering_settings(wc.model, wc.method),
    script:
        "../workflow_scripts/steps/steer.py"


rule collect_steering:
    input:
        steering_files,
    output:
        csv=report(
            paths.fill(paths.TABLE, table="steering", ext="csv"),
            caption="../resources/report/steering_table.rst",
            category="Steering",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "steering table"},
        ),
        parquet=paths.fill(paths.TABLE, table="steering", ext="parquet"),
    log:
        logs("collect_steering", "model"),
    benchmark:
        benchmarks("collect_steering", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        seed=lambda wc: method_settings(wc.model, "steering")["seed"],
    script:
        "../workflow_scripts/steps/collect_steering.py"


rule plot_steering:
    input:
        paths.fill(paths.TABLE, table="steering", ext="parquet"),
    output:
        report(
            paths.fill(paths.FIGURE, figure="steering"),
            caption="../resources/report/steering.rst",
            category="Steering",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "steering"},
        ),
    log:
        logs("plot_steering", "model"),
    benchmark:
        benchmarks("plot_steering", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/plot_steering.py"


rule generation_cases:
    input:
        unpack(cases_inputs),
    output:
        paths.CASES,
    log:
        logs("generation_cases", "model", "lang"),
    benchmark:
        benchmarks("generation_cases", "model", "lang")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=lambda wc: cases_settings(wc.model, wc.lang),
        methods=METHODS,
    script:
        "../workflow_scripts/steps/generation_cases.py"


rule collect_cases:
    input:
        lambda wc: [
            paths.fill(paths.CASES, model=wc.model, lang=lang) for lang in LANGS
        ],
    output:
        csv=paths.fill(paths.TABLE, table="cases", ext="csv"),
        html=report(
            paths.fill(paths.TABLE, table="cases", ext="html"),
            caption="../resources/report/cases.rst",
            category="Steering",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "generation cases"},
        ),
    log:
        logs("collect_cases", "model"),
    benchmark:
        benchmarks("collect_cases", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/steps/collect_cases.py"
