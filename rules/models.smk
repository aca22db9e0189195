"""Models built by the workflow: GGUF conversion and tiny-model pretraining."""


rule convert_gguf:
    output:
        directory("results/models/{model}"),
    log:
        f"{LOGS}/convert_gguf/{{model}}.log",
    benchmark:
        f"{BENCH}/convert_gguf/{{model}}.tsv"
    wildcard_constraints:
        model=models_of_kind("gguf"),
    conda:
        "../envs/workflow.yaml"
    threads: 2
    resources:
        mem_mb=lambda wc: 2 * model_resources(wc.model, "mem_mb"),
        runtime=30,
    params:
        gguf=lambda wc: model_spec(wc.model)["gguf"],
        dtype=lambda wc: model_spec(wc.model)["dtype"],
    script:
        "../workflow_scripts/steps/convert_gguf.py"


rule pretrain_tiny:
    input:
        lambda wc: tiny_corpus_files(wc.model).values(),
    output:
        directory("results/models/{model}"),
    log:
        f"{LOGS}/pretrain_tiny/{{model}}.log",
    benchmark:
        f"{BENCH}/pretrain_tiny/{{model}}.tsv"
    wildcard_constraints:
        model=models_of_kind("tiny"),
    conda:
        "../envs/workflow.yaml"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        spec=lambda wc: model_spec(wc.model)["tiny"],
        corpora=lambda wc: tiny_corpus_files(wc.model),
        checkpoint_dir=f"{CHECKPOINTS}/pretrain_tiny/{{model}}",
    script:
        "../workflow_scripts/steps/pretrain_tiny.py"
