"""GPT translation of source datasets through any OpenAI-compatible server (resumable)."""


rule translate:
    input:
        dataset_source_input,
    output:
        table="results/translated/{dataset}/{lang}.parquet",
        report="results/translated/{dataset}/{lang}.report.json",
    log:
        f"{LOGS}/translate/{{dataset}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/translate/{{dataset}}/{{lang}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        spec=dataset_spec,
        settings=config["translation"],
        cache=translation_cache,
    script:
        "../workflow_scripts/steps/translate.py"
