from workflow_scripts.data.corpus import sample_texts
from workflow_scripts.io import write_parquet
from workflow_scripts.neurons.logit_lens import corpus_logit_lens
from workflow_scripts.steps._step import model_of, run

sm = snakemake


def main() -> None:
    model, tokenizer, s = model_of(sm, "logit_lens")
    texts = sample_texts(sm.input.corpus, s["split"], s["n_docs"])
    table, meta = corpus_logit_lens(
        model,
        tokenizer,
        texts,
        sm.wildcards.lang,
        s["classifier_languages"],
        top_k=s["top_k"],
        max_length=s["max_length"],
        batch_size=s["batch_size"],
        final_norm=s["final_norm"],
        split=s["split"],
    )
    meta = {"model": sm.wildcards.model, **meta}
    write_parquet(table, sm.output[0], metadata=meta)


run(sm, main)
