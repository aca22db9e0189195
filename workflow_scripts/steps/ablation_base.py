from workflow_scripts.evaluation.ablation import base_perplexities, base_table
from workflow_scripts.evaluation.perplexity import evaluation_texts, perplexity_settings
from workflow_scripts.io import write_parquet
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    lang = sm.wildcards.lang
    model, tokenizer, s = model_of(sm, "ablation")
    texts, skipped = evaluation_texts({lang: sm.input.corpus}, s["split"], s["n_docs"])
    base = base_perplexities(model, tokenizer, texts, None, **perplexity_settings(s))
    meta = {**sm.params.settings, "skipped_eval_langs": skipped}
    write_parquet(base_table(base), sm.output[0], metadata=meta)


run(sm, main)
