"""Corpus preparation: one language of one corpus per job."""


rule prepare_corpus:
    input:
        corpus_source_input,
    output:
        paths.CORPUS,
    log:
        logs("prepare_corpus", "corpus", "lang"),
    benchmark:
        benchmarks("prepare_corpus", "corpus", "lang")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        spec=lambda wc: CORPORA[wc.corpus],
    script:
        "../workflow_scripts/steps/prepare_corpus.py"
