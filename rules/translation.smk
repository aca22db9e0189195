"""GPT translation of source datasets through any OpenAI-compatible server (resumable)."""


rule translate:
    input:
        dataset_source_input,
    output:
        table=paths.TRANSLATED,
        report=paths.TRANSLATION_REPORT,
    log:
        logs("translate", "dataset", "lang"),
    benchmark:
        benchmarks("translate", "dataset", "lang")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        spec=dataset_spec,
        settings=config["translation"],
        cache=paths.TRANSLATION_CACHE,
    script:
        "../workflow_scripts/steps/translate.py"
