from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.evaluation.unit_stats import unit_statistics
from workflow_scripts.io import write_parquet
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    model, tokenizer, s = model_of(sm, "unit_stats")
    texts = sample_texts(sm.input.corpus, s["split"], s["n_docs"])
    units, hidden, n_tokens = unit_statistics(
        model,
        tokenizer,
        texts,
        modules=s["modules"],
        max_length=s["max_length"],
        batch_size=s["batch_size"],
    )
    meta = {"lang": sm.wildcards.lang, "n_tokens": n_tokens, **sm.params.settings}
    write_parquet(units, sm.output.units, metadata=meta)
    write_parquet(hidden, sm.output.hidden, metadata=meta)


run(sm, main)
