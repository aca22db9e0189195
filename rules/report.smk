"""The findings table: one row per claim of the seed papers, measured, holds or not."""


rule findings:
    input:
        unpack(findings_inputs),
    output:
        csv=report(
            paths.fill(paths.TABLE, table="findings", ext="csv"),
            caption="../resources/report/findings.rst",
            category="Findings",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "findings table"},
        ),
        parquet=paths.fill(paths.TABLE, table="findings", ext="parquet"),
    log:
        logs("findings", "model"),
    benchmark:
        benchmarks("findings", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        methods=METHODS,
        conditions=actcount_conditions(),
        stage_method=config["layer_stages"]["method"],
    script:
        "../workflow_scripts/steps/findings.py"
