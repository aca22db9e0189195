from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.io import write_parquet
from workflow_scripts.neurons.routing import routing_counts
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    model, tokenizer, s = model_of(sm, "experts")
    texts = sample_texts(sm.input.corpus, s["split"], s["n_docs"])
    table = routing_counts(
        model, tokenizer, texts, batch_size=s["batch_size"], max_length=s["max_length"]
    )
    write_parquet(table, sm.output[0], metadata={"lang": sm.wildcards.lang, **sm.params.settings})


run(sm, main)
