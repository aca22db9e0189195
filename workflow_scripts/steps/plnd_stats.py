from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.io import write_parquet
from workflow_scripts.models.loading import load_model
from workflow_scripts.neurons.selection import plnd_stats
from workflow_scripts.steps._step import run, threads

sm = snakemake


def main() -> None:
    settings = sm.params.settings
    texts = sample_texts(sm.input.corpus, settings["split"], settings["n_docs"])
    model, tokenizer = load_model(sm.params.model_path, sm.params.dtype, threads(sm))
    table = plnd_stats(model, tokenizer, texts, settings)
    write_parquet(table, sm.output[0], metadata={"lang": sm.wildcards.lang, **settings})


run(sm, main)
