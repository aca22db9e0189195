from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.io import write_parquet
from workflow_scripts.neurons.selection import plnd_stats
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    model, tokenizer, settings = model_of(sm, "plnd")
    texts = sample_texts(sm.input.corpus, settings["split"], settings["n_docs"])
    table = plnd_stats(model, tokenizer, texts, settings)
    write_parquet(table, sm.output[0], metadata={"lang": sm.wildcards.lang, **sm.params.settings})


run(sm, main)
