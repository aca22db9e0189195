from workflow_scripts.evaluation.ablation import ablation_matrix, units_from_table
from workflow_scripts.evaluation.interventions import Intervention
from workflow_scripts.evaluation.perplexity import perplexity_settings
from workflow_scripts.evaluation.unit_stats import unit_values
from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.steps._step import evaluation_job, run

sm = snakemake


def main() -> None:
    lang = sm.wildcards.lang
    intervention = Intervention(**sm.params.intervention)
    values = None
    if intervention.needs_values:  # mean: pooled over the reference languages' statistics
        stats = list(sm.input.mean_stats)
        values = unit_values(dict(enumerate(stats)), "mean")
    eval_texts, skipped, model, tokenizer, s, base = evaluation_job(sm)
    table = ablation_matrix(
        model,
        tokenizer,
        {lang: units_from_table(read_parquet(sm.input.selection))},
        eval_texts,
        n_random=s["n_random"],
        seed=s["seed"],
        mode=s["mode"],
        intervention=intervention,
        values=values,
        base=base,
        **perplexity_settings(s),
    )
    meta = {
        "method": sm.wildcards.method,
        **sm.params.settings,
        "intervention": intervention.describe(),
        "skipped_eval_langs": skipped,
    }
    write_parquet(table, sm.output[0], metadata=meta)


run(sm, main)
