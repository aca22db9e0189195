"""Linguistic regions (Zhang et al.): per-language parameter scores, regions, region freezing."""


rule region_scores:
    input:
        model=model_input,
        corpus=lambda wc: corpus_file(corpus_of(wc.model), wc.lang),
    output:
        "results/regions/{model}/{score}/{lang}.safetensors",
    log:
        f"{LOGS}/region_scores/{{model}}/{{score}}/{{lang}}.log",
    benchmark:
        f"{BENCH}/region_scores/{{model}}/{{score}}/{{lang}}.tsv"
    wildcard_constraints:
        score="delta|grad_x_param",
    conda:
        "../envs/workflow.yaml"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        **model_cluster_resources(),
        mem_mb=lambda wc: 2 * model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model)["dtype"],
        settings=lambda wc: {**score_settings(wc.model), "score": wc.score},
        checkpoint_every=lambda wc: region_settings(wc.model)["checkpoint_every"],
        checkpoint_dir=f"{CHECKPOINTS}/region_scores/{{model}}/{{score}}/{{lang}}",
    script:
        "../workflow_scripts/steps/region_scores.py"


rule select_regions:
    input:
        model=model_input,
        scores=lambda wc: region_score_files(wc.model).values(),
    output:
        regions=expand("results/regions/{{model}}/{region}.parquet", region=REGIONS),
        table=report(
            "results/tables/regions_{model}.csv",
            caption="../resources/report/regions_table.rst",
            category="Linguistic regions",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "regions table"},
        ),
    log:
        f"{LOGS}/select_regions/{{model}}.log",
    benchmark:
        f"{BENCH}/select_regions/{{model}}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model)["dtype"],
        score_files=lambda wc: region_score_files(wc.model),
        score=lambda wc: region_settings(wc.model)["score"],
        k=lambda wc: region_settings(wc.model)["k"],
        seed=lambda wc: region_settings(wc.model)["seed"],
    script:
        "../workflow_scripts/steps/select_regions.py"


rule freeze_train:
    input:
        model=model_input,
        corpus=lambda wc: corpus_file(corpus_of(wc.model), wc.lang),
        region="results/regions/{model}/{region}.parquet",
    output:
        directory("results/finetuned/{model}/{lang}_freeze_{region}"),
    log:
        f"{LOGS}/freeze_train/{{model}}/{{lang}}_freeze_{{region}}.log",
    benchmark:
        f"{BENCH}/freeze_train/{{model}}/{{lang}}_freeze_{{region}}.tsv"
    wildcard_constraints:
        region="|".join(REGIONS),
    conda:
        "../envs/workflow.yaml"
    threads: lambda wc: model_resources(wc.model, "threads")
    resources:
        **model_cluster_resources(),
        mem_mb=lambda wc: 2 * model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        model_path=lambda wc: model_dir(wc.model),
        dtype=lambda wc: model_spec(wc.model)["dtype"],
        settings=lambda wc: {
            **score_settings(wc.model),
            "steps": region_settings(wc.model)["freeze_steps"],
        },
        checkpoint_every=lambda wc: region_settings(wc.model)["checkpoint_every"],
        checkpoint_dir=f"{CHECKPOINTS}/freeze_train/{{model}}/{{lang}}_{{region}}",
    script:
        "../workflow_scripts/steps/freeze_train.py"
