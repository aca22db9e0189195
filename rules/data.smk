"""Corpus preparation: one language of one corpus per job."""


rule prepare_corpus:
    input:
        corpus_source_input,
    output:
        "results/corpus/{corpus}/{lang}.parquet",
    log:
        f"{LOGS}/prepare_corpus/{{corpus}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/prepare_corpus/{{corpus}}/{{lang}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        spec=lambda wc: CORPORA[wc.corpus],
    script:
        "../workflow_scripts/steps/prepare_corpus.py"
