from workflow_scripts.evaluation.perplexity import perplexity_settings
from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.regions.perturbation import perturbation_table
from workflow_scripts.steps._step import evaluation_job, run

sm = snakemake


def main() -> None:
    r = sm.params.regions
    eval_texts, skipped, model, tokenizer, s, base = evaluation_job(sm)
    table = perturbation_table(
        model,
        tokenizer,
        sm.wildcards.region,
        read_parquet(sm.input.region),
        eval_texts,
        how=r["perturb"],
        scale=r["perturb_scale"],
        kinds=r["perturb_kinds"],
        seed=s["seed"],
        base=base,
        **perplexity_settings(s),
    )
    write_parquet(
        table,
        sm.output[0],
        metadata={"method": "region", **r, **sm.params.settings, "skipped_eval_langs": skipped},
    )


run(sm, main)
