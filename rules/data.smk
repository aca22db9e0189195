"""Corpus preparation: one language of one corpus per job."""


def corpus_source_input(wildcards):
    spec = CORPORA.get(wildcards.corpus)
    if spec is None:
        raise ValueError(
            f"unknown corpus {wildcards.corpus!r}: configured corpora are {', '.join(CORPORA)}"
        )
    check_language(wildcards.lang)
    if spec["source"] == "bundled":
        return spec["path"]
    if spec["source"] == "local":
        return spec["path"].format(lang=wildcards.lang)
    dataset = spec["dataset"]
    return dataset if Path(dataset).exists() else []


rule prepare_corpus:
    input:
        corpus_source_input,
    output:
        "results/corpus/{corpus}/{lang}.parquet",
    params:
        spec=lambda wc: CORPORA[wc.corpus],
    log:
        f"{LOGS}/prepare_corpus/{{corpus}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/prepare_corpus/{{corpus}}/{{lang}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    script:
        "../workflow_scripts/steps/prepare_corpus.py"
