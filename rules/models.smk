"""Models built by the workflow: GGUF conversion and tiny-model pretraining."""


rule convert_gguf:
    output:
        directory(paths.MODEL_DIR),
    log:
        logs("convert_gguf", "model"),
    benchmark:
        benchmarks("convert_gguf", "model")
    wildcard_constraints:
        model=models_of_kind("gguf"),
    conda:
        ENV
    threads: 1  # dequantizes on one core (numpy), beside the other first jobs
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
        corpora=lambda wc: tiny_corpus_files(wc.model).values(),
    output:
        directory(paths.MODEL_DIR),
    log:
        logs("pretrain_tiny", "model"),
    benchmark:
        benchmarks("pretrain_tiny", "model")
    wildcard_constraints:
        model=models_of_kind("tiny"),
    conda:
        ENV
    threads: model_threads
    resources:
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        spec=lambda wc: model_spec(wc.model)["tiny"],
        languages=lambda wc: list(tiny_corpus_files(wc.model)),
        checkpoint_dir=checkpoints_dir("pretrain_tiny", "model"),
    script:
        "../workflow_scripts/steps/pretrain_tiny.py"
