"""Models built by the workflow: GGUF conversion and tiny-model pretraining."""


rule convert_gguf:
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=models_of_kind("gguf"),
    params:
        gguf=lambda wc: model_spec(wc.model)["gguf"],
        dtype=lambda wc: model_spec(wc.model)["dtype"],
    log:
        f"{LOGS}/convert_gguf/{{model}}.log",
    benchmark:
        f"{BENCH}/convert_gguf/{{model}}.tsv"
    threads: 2
    resources:
        mem_mb=lambda wc: 2 * model_resources(wc.model, "mem_mb"),
        runtime=30,
    script:
        "../workflow_scripts/steps/convert_gguf.py"


def tiny_corpus_files(model):
    """lang -> corpus file of the tiny model's own pretraining languages."""
    spec = model_spec(model)["tiny"]
    corpus = spec.get("corpus", corpus_of(model))
    return {lang: corpus_file(corpus, lang) for lang in spec["languages"]}


rule pretrain_tiny:
    input:
        lambda wc: tiny_corpus_files(wc.model).values(),
    output:
        directory("results/models/{model}"),
    wildcard_constraints:
        model=models_of_kind("tiny"),
    params:
        spec=lambda wc: model_spec(wc.model)["tiny"],
        corpora=lambda wc: tiny_corpus_files(wc.model),
    log:
        f"{LOGS}/pretrain_tiny/{{model}}.log",
    benchmark:
        f"{BENCH}/pretrain_tiny/{{model}}.tsv"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    script:
        "../workflow_scripts/steps/pretrain_tiny.py"
