"""Fine-tuning experiments: Zhao et al.'s neuron enhancement and Zhang et al.'s forgetting
under continued training with a region frozen, measured before and after."""


rule finetune_base:
    input:
        unpack(finetune_base_inputs),
    output:
        paths.FINETUNE_BASE,
    log:
        logs("finetune_base", "model"),
    benchmark:
        benchmarks("finetune_base", "model")
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        settings=finetune_base_settings,
        eval_languages=lambda wc: finetune_eval_languages(wc.model),
        languages=lambda wc: (
            finetune_config(wc.model)["languages"]
            if finetune_config(wc.model)["task"] is not None
            else []
        ),
        task_spec=finetune_task_spec,
        task_settings=lambda wc: task_eval_settings(wc.model),
    script:
        "../workflow_scripts/steps/finetune_base.py"


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        paths.FINETUNE,
    log:
        logs("finetune", "model", "experiment", "{lang}_{variant}"),
    benchmark:
        benchmarks("finetune", "model", "experiment", "{lang}_{variant}")
    wildcard_constraints:
        experiment="enhance|forget",
        variant="neurons|random|full|lora|none|core|monolingual",
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(mem_factor=2),
    params:
        **model_params(),
        settings=finetune_settings,
        eval_languages=lambda wc: finetune_eval_languages(wc.model),
        task_spec=finetune_task_spec,
        task_settings=lambda wc: task_eval_settings(wc.model),
        checkpoint_every=lambda wc: finetune_config(wc.model)["checkpoint_every"],
        checkpoint_dir=checkpoints_dir(
            "finetune", "model", "experiment", "{lang}_{variant}"
        ),
        weights=paths.FINETUNED,
    script:
        "../workflow_scripts/steps/finetune.py"


rule collect_finetune:
    input:
        lambda wc: finetune_files(wc.model),
    output:
        parquet=paths.FINETUNE_ALL,
        csv=report(
            paths.fill(paths.TABLE, table="finetune", ext="csv"),
            caption="../resources/report/finetune_table.rst",
            category="Fine-tuning",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "fine-tuning table"},
        ),
    log:
        logs("collect_finetune", "model"),
    benchmark:
        benchmarks("collect_finetune", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/collect_finetune.py"


rule plot_finetune:
    input:
        paths.fill(paths.TABLE, table="finetune", ext="csv"),
    output:
        report(
            paths.fill(paths.FIGURE, figure="finetune"),
            caption="../resources/report/finetune.rst",
            category="Fine-tuning",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "fine-tuning"},
        ),
    log:
        logs("plot_finetune", "model"),
    benchmark:
        benchmarks("plot_finetune", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/plot_finetune.py"
