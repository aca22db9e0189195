"""The findings table: one row per claim of the seed papers, measured, holds or not."""


rule findings:
    input:
        unpack(findings_inputs),
    output:
        csv=report(
            "results/tables/findings_{model}.csv",
            caption="../resources/report/findings.rst",
            category="Findings",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "findings table"},
        ),
        parquet="results/tables/findings_{model}.parquet",
    log:
        f"{LOGS}/findings/{{model}}.log",
    benchmark:
        f"{BENCH}/findings/{{model}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        methods=METHODS,
        conditions=actcount_conditions(),
    script:
        "../workflow_scripts/steps/findings.py"
