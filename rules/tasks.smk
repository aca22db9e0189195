"""Tasks, not just perplexity: task data, Mu et al.'s parallel-input conditions and Zhao et
al.'s layer-stage ablation, measured on tasks (docs/methods.md, "Task evaluation")."""


rule build_task:
    input:
        task_source_input,
    output:
        paths.TASK,
    log:
        logs("build_task", "task", "lang"),
    benchmark:
        benchmarks("build_task", "task", "lang")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=lambda wc: task_spec(wc.task),
    script:
        "../workflow_scripts/steps/build_task.py"


rule evaluate_task:
    input:
        unpack(pim_task_inputs),
    output:
        paths.TASK_EVAL,
    log:
        logs("evaluate_task", "model", "task", "{subset}.{condition}"),
    benchmark:
        benchmarks("evaluate_task", "model", "task", "{subset}.{condition}")
    wildcard_constraints:
        subset="[a-z]{2}(-[a-z]{2})?",
        condition="monolingual|pim|repeat",
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        spec=lambda wc: task_spec(wc.task),
        settings=lambda wc: task_eval_settings(wc.model),
    script:
        "../workflow_scripts/steps/evaluate_task.py"


rule ablate_task_stage:
    input:
        unpack(stage_inputs),
    output:
        paths.TASK_EVAL,
    log:
        logs("ablate_task_stage", "model", "task", "{subset}.{condition}"),
    benchmark:
        benchmarks("ablate_task_stage", "model", "task", "{subset}.{condition}")
    wildcard_constraints:
        subset="[a-z]{2}",
        condition="stage-(none|understanding|task_attention|task_ffn|generation|all)",
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(),
    params:
        **model_params(),
        spec=lambda wc: task_spec(wc.task),
        settings=lambda wc: stage_settings(wc.model),
    script:
        "../workflow_scripts/steps/ablate_task_stage.py"


rule collect_tasks:
    input:
        pim_files,
    output:
        csv=report(
            paths.fill(paths.TABLE, table="tasks", ext="csv"),
            caption="../resources/report/tasks_table.rst",
            category="Tasks",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "PiM table"},
        ),
        parquet=paths.fill(paths.TABLE, table="tasks", ext="parquet"),
    log:
        logs("collect_tasks", "model"),
    benchmark:
        benchmarks("collect_tasks", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/steps/collect_tasks.py"


rule collect_layer_stages:
    input:
        stage_files,
    output:
        csv=report(
            paths.fill(paths.TABLE, table="layer_stages", ext="csv"),
            caption="../resources/report/layer_stages_table.rst",
            category="Tasks",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "layer-stage table"},
        ),
        parquet=paths.fill(paths.TABLE, table="layer_stages", ext="parquet"),
    log:
        logs("collect_layer_stages", "model"),
    benchmark:
        benchmarks("collect_layer_stages", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/steps/collect_layer_stages.py"


rule plot_pim:
    input:
        paths.fill(paths.TABLE, table="tasks", ext="parquet"),
    output:
        report(
            paths.fill(paths.FIGURE, figure="pim"),
            caption="../resources/report/pim.rst",
            category="Tasks",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "pim"},
        ),
    log:
        logs("plot_pim", "model"),
    benchmark:
        benchmarks("plot_pim", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/plot_pim.py"


rule plot_layer_stages:
    input:
        paths.fill(paths.TABLE, table="layer_stages", ext="parquet"),
    output:
        report(
            paths.fill(paths.FIGURE, figure="layer_stages"),
            caption="../resources/report/layer_stages.rst",
            category="Tasks",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "layer stages"},
        ),
    log:
        logs("plot_layer_stages", "model"),
    benchmark:
        benchmarks("plot_layer_stages", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/steps/plot_layer_stages.py"
