from workflow_scripts.ablation import ablation_matrix, units_from_table
from workflow_scripts.corpus import sample_texts
from workflow_scripts.io import read_parquet, write_parquet
from workflow_scripts.modeling import load_model
from workflow_scripts.steps._step import run, threads

sm = snakemake


def main() -> None:
    s, lang = sm.params.settings, sm.wildcards.lang
    eval_texts = {
        eval_lang: sample_texts(path, s["split"], s["n_docs"])
        for eval_lang, path in sm.params.corpora.items()
    }
    model, tokenizer = load_model(sm.params.model_path, sm.params.dtype, threads(sm))
    table = ablation_matrix(
        model,
        tokenizer,
        {lang: units_from_table(read_parquet(sm.input.selection))},
        eval_texts,
        n_random=s["n_random"],
        seed=s["seed"],
        mode=s["mode"],
        max_length=s["max_length"],
        batch_size=s["batch_size"],
        max_tokens=s["max_tokens"],
    )
    write_parquet(table, sm.output[0], metadata={"method": sm.wildcards.method, **s})


run(sm, main)
