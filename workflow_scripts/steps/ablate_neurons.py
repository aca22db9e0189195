from workflow_scripts.evaluation.ablation import ablation_matrix, units_from_table
from workflow_scripts.evaluation.perplexity import evaluation_texts, perplexity_settings
from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.models.loading import load_model
from workflow_scripts.steps._step import run, threads

sm = snakemake


def main() -> None:
    s, lang = sm.params.settings, sm.wildcards.lang
    eval_texts, skipped = evaluation_texts(
        dict(zip(sm.params.languages, sm.input.corpora, strict=True)), s["split"], s["n_docs"]
    )
    model, tokenizer = load_model(sm.params.model_path, sm.params.dtype, threads(sm))
    table = ablation_matrix(
        model,
        tokenizer,
        {lang: units_from_table(read_parquet(sm.input.selection))},
        eval_texts,
        n_random=s["n_random"],
        seed=s["seed"],
        mode=s["mode"],
        **perplexity_settings(s),
    )
    meta = {"method": sm.wildcards.method, **s, "skipped_eval_langs": skipped}
    write_parquet(table, sm.output[0], metadata=meta)


run(sm, main)
