"""Linguistic regions (Zhang et al.): per-language parameter scores and the regions (region
freezing is a fine-tuning experiment: rules/finetune.smk)."""


rule region_scores:
    input:
        model=model_input,
        corpus=model_corpus,
    output:
        paths.REGION_SCORES,
    log:
        logs("region_scores", "model", "score", "lang"),
    benchmark:
        benchmarks("region_scores", "model", "score", "lang")
    wildcard_constraints:
        score="delta|grad_x_param",
    conda:
        ENV
    threads: model_threads
    resources:
        **model_job_resources(mem_factor=2),
    params:
        **model_params(),
        settings=lambda wc: {**score_settings(wc.model), "score": wc.score},
        checkpoint_every=lambda wc: region_settings(wc.model)["checkpoint_every"],
        checkpoint_dir=checkpoints_dir("region_scores", "model", "score", "lang"),
    script:
        "../workflow_scripts/steps/region_scores.py"


rule select_regions:
    input:
        model=model_input,
        scores=lambda wc: region_score_files(wc.model),
    output:
        regions=[paths.fill(paths.REGION, region=region) for region in REGIONS],
        table=report(
            paths.fill(paths.TABLE, table="regions", ext="csv"),
            caption="../resources/report/regions_table.rst",
            category="Linguistic regions",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "regions table"},
        ),
    log:
        logs("select_regions", "model"),
    benchmark:
        benchmarks("select_regions", "model")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda wc: model_resources(wc.model, "mem_mb"),
        runtime=lambda wc: model_resources(wc.model, "runtime"),
    params:
        **model_params(),
        languages=REGION_LANGS,
        score=lambda wc: region_settings(wc.model)["score"],
        k=lambda wc: region_settings(wc.model)["k"],
        seed=lambda wc: region_settings(wc.model)["seed"],
    script:
        "../workflow_scripts/steps/select_regions.py"
